//! `engram dump --format arrow|parquet` (cargo feature `columnar`): the JSON-lines dump as
//! one table, one row per record. The header line goes into the schema's metadata
//! (`engram_dump_header`). Columns: `type`, `tenant`, `identity`, `session`, `name`, `seq`,
//! `sha256` (the key parts), `text`, `timestamp_ms` (event time, memory recorded time) and
//! `embedding` (for analysis), and `record` (the stored record as JSON, as in the JSON-lines
//! dump).

use anyhow::{Context, Result};
use arrow::array::{ArrayRef, Float32Builder, Int64Builder, ListBuilder, StringBuilder, UInt64Builder};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

/// Rows buffered per record batch.
const BATCH_ROWS: usize = 8192;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Arrow,
    Parquet,
}

fn schema(header: &str) -> Schema {
    let string = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    let fields = vec![
        string("type", false),
        string("tenant", false),
        string("identity", true),
        string("session", true),
        string("name", true),
        Field::new("seq", DataType::UInt64, true),
        string("sha256", true),
        string("text", true),
        Field::new("timestamp_ms", DataType::Int64, true),
        Field::new("embedding", DataType::List(Arc::new(Field::new("item", DataType::Float32, true))), true),
        string("record", false),
    ];
    Schema::new_with_metadata(fields, HashMap::from([("engram_dump_header".to_string(), header.to_string())]))
}

enum Writer<W: Write + Send> {
    Arrow(arrow::ipc::writer::FileWriter<W>),
    Parquet(parquet::arrow::ArrowWriter<W>),
}

struct Builders {
    kind: StringBuilder,
    tenant: StringBuilder,
    identity: StringBuilder,
    session: StringBuilder,
    name: StringBuilder,
    seq: UInt64Builder,
    sha256: StringBuilder,
    text: StringBuilder,
    timestamp_ms: Int64Builder,
    embedding: ListBuilder<Float32Builder>,
    record: StringBuilder,
    rows: usize,
}

impl Builders {
    fn new() -> Self {
        Builders {
            kind: StringBuilder::new(),
            tenant: StringBuilder::new(),
            identity: StringBuilder::new(),
            session: StringBuilder::new(),
            name: StringBuilder::new(),
            seq: UInt64Builder::new(),
            sha256: StringBuilder::new(),
            text: StringBuilder::new(),
            timestamp_ms: Int64Builder::new(),
            embedding: ListBuilder::new(Float32Builder::new()),
            record: StringBuilder::new(),
            rows: 0,
        }
    }

    fn push(&mut self, line: &Value) -> Result<()> {
        let key = &line["key"];
        let record = &line["record"];
        let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
        self.kind.append_value(line["type"].as_str().context("a record line without a type")?);
        self.tenant.append_option(key["tenant"].as_str().or_else(|| record["name"].as_str()));
        self.identity.append_option(text(&key["identity"]));
        self.session.append_option(text(&key["session"]));
        self.name.append_option(text(&key["name"]));
        self.seq.append_option(key["seq"].as_u64());
        self.sha256.append_option(text(&key["sha256"]));
        self.text.append_option(record["text"].as_str());
        self.timestamp_ms.append_option(record["timestamp_ms"].as_i64().or_else(|| record["recorded_at_ms"].as_i64()));
        match record["embedding"].as_array().filter(|a| !a.is_empty()) {
            Some(values) => {
                for x in values {
                    self.embedding.values().append_value(x.as_f64().context("an embedding value")? as f32);
                }
                self.embedding.append(true);
            }
            None => self.embedding.append(false),
        }
        self.record.append_value(serde_json::to_string(record)?);
        self.rows += 1;
        Ok(())
    }

    fn batch(&mut self, schema: &Arc<Schema>) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.kind.finish()),
            Arc::new(self.tenant.finish()),
            Arc::new(self.identity.finish()),
            Arc::new(self.session.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.seq.finish()),
            Arc::new(self.sha256.finish()),
            Arc::new(self.text.finish()),
            Arc::new(self.timestamp_ms.finish()),
            Arc::new(self.embedding.finish()),
            Arc::new(self.record.finish()),
        ];
        self.rows = 0;
        Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
    }
}

/// A `Write` that takes the JSON-lines dump and writes it as an Arrow IPC or Parquet file.
pub struct ColumnarSink<W: Write + Send> {
    format: Format,
    out: Option<W>,
    writer: Option<(Writer<W>, Arc<Schema>)>,
    pending: Vec<u8>,
    rows: Builders,
}

impl<W: Write + Send> ColumnarSink<W> {
    pub fn new(format: Format, out: W) -> Self {
        ColumnarSink { format, out: Some(out), writer: None, pending: Vec::new(), rows: Builders::new() }
    }

    fn line(&mut self, line: &[u8]) -> Result<()> {
        if self.writer.is_none() {
            let header = std::str::from_utf8(line)?;
            let schema = Arc::new(schema(header));
            let out = self.out.take().context("the output is gone")?;
            let writer = match self.format {
                Format::Arrow => Writer::Arrow(arrow::ipc::writer::FileWriter::try_new(out, &schema)?),
                Format::Parquet => {
                    Writer::Parquet(parquet::arrow::ArrowWriter::try_new(out, Arc::clone(&schema), None)?)
                }
            };
            self.writer = Some((writer, schema));
            return Ok(());
        }
        if engram::is_dump_trailer(line) {
            // The dump's integrity check: written by the dump this sink is fed from.
            return Ok(());
        }
        self.rows.push(&serde_json::from_slice(line)?)?;
        if self.rows.rows >= BATCH_ROWS {
            self.flush_rows()?;
        }
        Ok(())
    }

    fn flush_rows(&mut self) -> Result<()> {
        let Some((writer, schema)) = self.writer.as_mut() else { return Ok(()) };
        if self.rows.rows == 0 {
            return Ok(());
        }
        let batch = self.rows.batch(schema)?;
        match writer {
            Writer::Arrow(w) => w.write(&batch)?,
            Writer::Parquet(w) => w.write(&batch)?,
        }
        Ok(())
    }

    /// Writes the last rows and the file's footer.
    pub fn finish(mut self) -> Result<()> {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.line(&rest)?;
        }
        self.flush_rows()?;
        match self.writer.take() {
            Some((Writer::Arrow(mut w), _)) => w.finish()?,
            Some((Writer::Parquet(w), _)) => {
                w.close()?;
            }
            None => anyhow::bail!("the dump had no header"),
        }
        Ok(())
    }
}

impl<W: Write + Send> Write for ColumnarSink<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.line(&line[..line.len() - 1]).map_err(std::io::Error::other)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
