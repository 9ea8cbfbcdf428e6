use crate::Space;

/// One operation of a [`Batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    Put {
        space: Space,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        space: Space,
        key: Vec<u8>,
    },
    /// Deletes every key in `[start, end)`.
    DeleteRange {
        space: Space,
        start: Vec<u8>,
        end: Vec<u8>,
    },
}

/// Operations applied atomically, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<BatchOp>,
    size_bytes: usize,
}

impl Batch {
    pub fn new() -> Self {
        Batch::default()
    }

    pub fn put(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>) {
        self.size_bytes += key.len() + value.len();
        self.ops.push(BatchOp::Put { space, key, value });
    }

    pub fn delete(&mut self, space: Space, key: Vec<u8>) {
        self.size_bytes += key.len();
        self.ops.push(BatchOp::Delete { space, key });
    }

    pub fn delete_range(&mut self, space: Space, start: Vec<u8>, end: Vec<u8>) {
        debug_assert!(start <= end, "range delete with start after end");
        self.size_bytes += start.len() + end.len();
        self.ops.push(BatchOp::DeleteRange { space, start, end });
    }

    /// Appends `other`'s operations after this batch's.
    pub fn extend(&mut self, other: Batch) {
        self.size_bytes += other.size_bytes;
        self.ops.extend(other.ops);
    }

    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    pub fn into_ops(self) -> Vec<BatchOp> {
        self.ops
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Keys and values, in bytes.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }
}
