//! Token counting with OpenAI's tokenizers (tiktoken), chat framing included.
//!
//! A chat message costs its texts plus a fixed framing, as OpenAI's cookbook counts it:
//! 3 tokens per message, the role, the content, and for each tool call its id, name and
//! arguments plus 1; a reply costs 3 tokens of priming. Tool calls are counted a little
//! high (the id is not always billed), never low: a context counted here is never over its
//! budget on the wire.

use engram_core::context::{ChatMessage, TokenizerName};
use tiktoken_rs::CoreBPE;

/// Tokens every message costs besides its texts.
pub const TOKENS_PER_MESSAGE: u32 = 3;
/// Tokens every tool call costs besides its id, name and arguments.
pub const TOKENS_PER_TOOL_CALL: u32 = 1;
/// Tokens that prime the model's reply, once per request.
pub const REPLY_PRIMING_TOKENS: u32 = 3;

/// A tokenizer, loaded once per process (o200k_base takes ~100 ms to load).
#[derive(Clone, Copy)]
pub struct TokenCounter {
    bpe: &'static CoreBPE,
}

impl std::fmt::Debug for TokenCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCounter").finish_non_exhaustive()
    }
}

impl TokenCounter {
    pub fn new(name: TokenizerName) -> Self {
        let bpe = match name {
            TokenizerName::O200kBase => tiktoken_rs::o200k_base_singleton(),
            TokenizerName::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
        };
        TokenCounter { bpe }
    }

    /// Tokens of a text (special-token markers in it count as ordinary text).
    pub fn text(&self, text: &str) -> u32 {
        self.encode(text).len() as u32
    }

    /// The text's tokens. The tokenizer's regex backtracks on very long whitespace runs
    /// (and gives up past a million steps), so runs longer than [`MAX_WHITESPACE_RUN`]
    /// bytes are encoded in pieces: exact for every text without such a run, a token or so
    /// off per cut otherwise.
    fn encode(&self, text: &str) -> Vec<u32> {
        let mut tokens = Vec::new();
        for piece in whitespace_safe_pieces(text) {
            tokens.extend(self.bpe.encode_ordinary(piece));
        }
        tokens
    }

    /// Tokens of `segments` joined, with each token counted in the segment where its first
    /// byte is: the counts add up to the joined text's count exactly.
    pub fn segments(&self, segments: &[&str]) -> Vec<u32> {
        let joined = segments.concat();
        let mut counts = vec![0u32; segments.len()];
        let mut ends = Vec::with_capacity(segments.len());
        let mut end = 0usize;
        for s in segments {
            end += s.len();
            ends.push(end);
        }
        let mut offset = 0usize;
        let mut at = 0usize;
        for token in self.encode(&joined) {
            while at < ends.len() && offset >= ends[at] {
                at += 1;
            }
            if let Some(c) = counts.get_mut(at.min(segments.len().saturating_sub(1))) {
                *c += 1;
            }
            offset += self.bpe.decode_bytes(&[token]).map_or(0, |b| b.len());
        }
        counts
    }

    /// Tokens of one message, framing included.
    pub fn message(&self, m: &ChatMessage) -> u32 {
        self.message_framing(m) + self.message_texts(m)
    }

    /// The framing of a message: the per-message overhead and the role.
    pub fn message_framing(&self, m: &ChatMessage) -> u32 {
        TOKENS_PER_MESSAGE + self.text(m.role.as_str())
    }

    /// The texts of a message: content, tool call id, tool calls.
    pub fn message_texts(&self, m: &ChatMessage) -> u32 {
        let mut n = m.content.as_deref().map_or(0, |c| self.text(c));
        n += m.tool_call_id.as_deref().map_or(0, |id| self.text(id));
        for call in &m.tool_calls {
            n += self.tool_call(&call.id, &call.function.name, &call.function.arguments);
        }
        n
    }

    /// One tool call of an assistant message.
    pub fn tool_call(&self, id: &str, name: &str, arguments: &str) -> u32 {
        self.text(id) + self.text(name) + self.text(arguments) + TOKENS_PER_TOOL_CALL
    }

    /// Tokens of a whole request's messages: each message and the reply priming (0 for no
    /// messages).
    pub fn messages(&self, messages: &[ChatMessage]) -> u32 {
        if messages.is_empty() {
            return 0;
        }
        messages.iter().map(|m| self.message(m)).sum::<u32>() + REPLY_PRIMING_TOKENS
    }

    /// Cuts `text` to at most `max` tokens: its head and its tail around `marker(omitted)`
    /// (which receives how many tokens were left out). Returns the text, whether it was cut,
    /// and its tokens; the text unchanged when it fits.
    pub fn truncate(&self, text: &str, max: u32, marker: impl Fn(u32) -> String) -> (String, bool, u32) {
        let tokens = self.encode(text);
        let total = tokens.len() as u32;
        if total <= max {
            return (text.to_string(), false, total);
        }
        // Token boundaries are not stable under concatenation: cut, count the result, and
        // cut deeper until it fits.
        let mut keep = max.saturating_sub(self.text(&marker(total)) + 2);
        loop {
            let head_n = (keep * 2).div_ceil(3) as usize;
            let tail_n = (keep as usize).saturating_sub(head_n);
            let head = self.decode_prefix(&tokens[..head_n]);
            let tail = self.decode_suffix(&tokens[tokens.len() - tail_n..]);
            let omitted = total.saturating_sub(head_n as u32 + tail_n as u32);
            let cut = format!("{head}\n{}\n{tail}", marker(omitted));
            let n = self.text(&cut);
            if n >= total {
                // The marker alone is longer than what it would replace.
                return (text.to_string(), false, total);
            }
            if n <= max || keep == 0 {
                return (cut, true, n);
            }
            keep = keep.saturating_sub((n - max).max(1));
        }
    }

    /// The longest valid UTF-8 prefix of the tokens' bytes.
    fn decode_prefix(&self, tokens: &[u32]) -> String {
        let bytes = self.bpe.decode_bytes(tokens).unwrap_or_default();
        match std::str::from_utf8(&bytes) {
            Ok(s) => s.to_string(),
            Err(e) => String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned(),
        }
    }

    /// The tokens' bytes without a leading partial character (and anything invalid after).
    fn decode_suffix(&self, tokens: &[u32]) -> String {
        let bytes = self.bpe.decode_bytes(tokens).unwrap_or_default();
        let start = bytes.iter().position(|b| (b & 0b1100_0000) != 0b1000_0000).unwrap_or(bytes.len());
        let rest = &bytes[start..];
        match std::str::from_utf8(rest) {
            Ok(s) => s.to_string(),
            Err(e) => String::from_utf8_lossy(&rest[..e.valid_up_to()]).into_owned(),
        }
    }
}

/// Longest whitespace run encoded in one piece, in bytes.
pub const MAX_WHITESPACE_RUN: usize = 4096;

/// `text` cut inside whitespace runs longer than [`MAX_WHITESPACE_RUN`] bytes.
fn whitespace_safe_pieces(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut run = 0usize;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            run += c.len_utf8();
            if run >= MAX_WHITESPACE_RUN {
                let cut = i + c.len_utf8();
                pieces.push(&text[start..cut]);
                start = cut;
                run = 0;
            }
        } else {
            run = 0;
        }
    }
    pieces.push(&text[start..]);
    pieces
}

/// Tokens of `messages` as a chat request counts them with `tokenizer` (see the module
/// documentation for the framing rule).
pub fn count_chat_tokens(tokenizer: TokenizerName, messages: &[ChatMessage]) -> u32 {
    TokenCounter::new(tokenizer).messages(messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_core::model::Role;

    #[test]
    fn counts_known_texts() {
        let c = TokenCounter::new(TokenizerName::Cl100kBase);
        // cl100k_base: "hello world" is [15339, 1917].
        assert_eq!(c.text("hello world"), 2);
        assert_eq!(c.text(""), 0);
        let o = TokenCounter::new(TokenizerName::O200kBase);
        assert!(o.text("The quick brown fox jumps over the lazy dog.") >= 9);
        // A special-token marker is ordinary text, several tokens long.
        assert!(o.text("<|endoftext|>") > 1);
    }

    #[test]
    fn a_message_costs_its_framing_and_texts() {
        let c = TokenCounter::new(TokenizerName::Cl100kBase);
        let m = ChatMessage {
            role: Role::User,
            content: Some("hello world".into()),
            tool_calls: vec![],
            tool_call_id: None,
        };
        // 3 per message, 1 for "user", 2 for the content; 3 of reply priming.
        assert_eq!(c.message(&m), 6);
        assert_eq!(c.messages(std::slice::from_ref(&m)), 9);
        assert_eq!(c.messages(&[]), 0);
    }

    #[test]
    fn huge_whitespace_runs_do_not_break_the_tokenizer() {
        let c = TokenCounter::new(TokenizerName::O200kBase);
        let text = format!("x{}x", " ".repeat(1_200_000));
        let n = c.text(&text);
        assert!(n > 2 && n < 10_000, "{n}");
        let (cut, truncated, m) = c.truncate(&text, 100, |n| format!("[{n} omitted]"));
        assert!(truncated && m <= 100 && cut.starts_with('x') && cut.ends_with('x'));
        // Short runs are encoded whole: the count is the tokenizer's own.
        assert_eq!(whitespace_safe_pieces("a   b\n\n c").len(), 1);
    }

    #[test]
    fn segment_counts_add_up_to_the_joined_count() {
        let c = TokenCounter::new(TokenizerName::O200kBase);
        let lines: Vec<String> = (0..40).map(|i| format!("\n- (fact) Fact number {i} is true.")).collect();
        let mut segments = vec!["Relevant memories:"];
        segments.extend(lines.iter().map(String::as_str));
        let counts = c.segments(&segments);
        assert_eq!(counts.iter().sum::<u32>(), c.text(&segments.concat()));
        assert!(counts.iter().all(|&n| n > 0), "{counts:?}");
        assert_eq!(c.segments(&[]), Vec::<u32>::new());
        assert_eq!(c.segments(&["", "ab"]).iter().sum::<u32>(), c.text("ab"));
    }

    #[test]
    fn truncation_keeps_head_and_tail_within_the_limit() {
        let c = TokenCounter::new(TokenizerName::O200kBase);
        let text: String = (0..2000).map(|i| format!("line {i} of the output; ")).collect::<Vec<_>>().concat();
        let text = format!("HEAD-MARK {text} ünïcödé TAIL-MARK");
        for max in [0, 1, 10, 50, 100, 333] {
            let (cut, truncated, n) = c.truncate(&text, max, |n| format!("[... {n} tokens omitted ...]"));
            assert!(truncated);
            assert_eq!(n, c.text(&cut));
            assert!(
                c.text(&cut) <= max.max(c.text("[... 99999 tokens omitted ...]") + 2),
                "max {max}: {}",
                c.text(&cut)
            );
            if max >= 50 {
                assert!(cut.starts_with("HEAD-MARK"), "{cut}");
                assert!(cut.ends_with("TAIL-MARK"), "{cut}");
                assert!(cut.contains("tokens omitted"));
            }
        }
        let (same, truncated, n) = c.truncate("short", 10, |_| unreachable!());
        assert_eq!((same.as_str(), truncated, n), ("short", false, 1));
    }
}
