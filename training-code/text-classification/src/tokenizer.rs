//! The tokenizer and the vocabulary: the same functions at training and at serving time.
//!
//! Tokenization (`basic_english_v1`): lowercase; runs of letters and digits are words; a `.` or
//! `,` between two digits stays inside the number (`3.5`, `1,000`); every other non-space
//! character is a token of its own (`don't` → `don`, `'`, `t`). The vocabulary holds `<unk>` at
//! id 0, then the training split's tokens by descending frequency, ties in byte order.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The name recorded in artifacts for the tokenization rules above.
pub const TOKENIZER_NAME: &str = "basic_english_v1";

/// The token every out-of-vocabulary word maps to; always id 0.
pub const UNK: &str = "<unk>";

/// Splits `text` into lowercase tokens.
pub fn tokenize(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().flat_map(char::to_lowercase).collect();
    let mut tokens = Vec::new();
    let mut word = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_alphanumeric() {
            word.push(c);
            continue;
        }
        let inside_number = (c == '.' || c == ',')
            && word.chars().last().is_some_and(|p| p.is_ascii_digit())
            && chars.get(i + 1).is_some_and(char::is_ascii_digit);
        if inside_number {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            tokens.push(std::mem::take(&mut word));
        }
        if !c.is_whitespace() {
            tokens.push(c.to_string());
        }
    }
    if !word.is_empty() {
        tokens.push(word);
    }
    tokens
}

/// Token ↔ id mapping of a trained model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocab {
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
}

/// `vocab.json`: the tokenizer's name and the tokens in id order.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VocabFile {
    tokenizer: String,
    tokens: Vec<String>,
}

impl Vocab {
    /// The vocabulary of `texts`: `<unk>`, then every token by descending count.
    pub fn build<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for text in texts {
            for token in tokenize(text) {
                *counts.entry(token).or_default() += 1;
            }
        }
        counts.remove(UNK);
        let mut by_count: Vec<(String, usize)> = counts.into_iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let tokens = std::iter::once(UNK.to_string())
            .chain(by_count.into_iter().map(|(token, _)| token))
            .collect();
        Self::from_tokens(tokens)
    }

    fn from_tokens(tokens: Vec<String>) -> Self {
        let ids = tokens
            .iter()
            .enumerate()
            .map(|(id, token)| (token.clone(), id as u32))
            .collect();
        Self { tokens, ids }
    }

    /// Adds the tokens of `texts` that are not known yet, after the existing ones (existing ids
    /// never change, so a fine-tuned model keeps its base model's embedding rows). Returns how
    /// many were added.
    pub fn extend<'a>(&mut self, texts: impl IntoIterator<Item = &'a str>) -> usize {
        let fresh = Self::build(texts);
        let before = self.tokens.len();
        for token in fresh.tokens.into_iter().skip(1) {
            if !self.ids.contains_key(&token) {
                self.ids.insert(token.clone(), self.tokens.len() as u32);
                self.tokens.push(token);
            }
        }
        self.tokens.len() - before
    }

    /// Number of tokens, `<unk>` included.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether only `<unk>` is known (never true for a built vocabulary).
    pub fn is_empty(&self) -> bool {
        self.tokens.len() <= 1
    }

    /// The id of `token`, `<unk>`'s (0) when unknown.
    pub fn id(&self, token: &str) -> u32 {
        self.ids.get(token).copied().unwrap_or(0)
    }

    /// The token ids of `text`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        tokenize(text).iter().map(|t| self.id(t)).collect()
    }

    /// The tokens in id order.
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// The `vocab.json` form.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let file = VocabFile {
            tokenizer: TOKENIZER_NAME.to_string(),
            tokens: self.tokens.clone(),
        };
        serde_json::to_vec(&file).map_err(|e| Error::Artifact(format!("vocab.json: {e}")))
    }

    /// Parses `vocab.json`, checking the tokenizer name, `<unk>` at id 0 and unique tokens.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let file: VocabFile = serde_json::from_slice(bytes)
            .map_err(|e| Error::Artifact(format!("vocab.json: {e}")))?;
        if file.tokenizer != TOKENIZER_NAME {
            return Err(Error::Artifact(format!(
                "vocab.json: unknown tokenizer {:?}",
                file.tokenizer
            )));
        }
        if file.tokens.first().map(String::as_str) != Some(UNK) {
            return Err(Error::Artifact("vocab.json: token 0 must be <unk>".into()));
        }
        let vocab = Self::from_tokens(file.tokens);
        if vocab.ids.len() != vocab.tokens.len() {
            return Err(Error::Artifact("vocab.json: duplicate tokens".into()));
        }
        Ok(vocab)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(text: &str) -> Vec<String> {
        tokenize(text)
    }

    #[test]
    fn lowercases_and_splits_punctuation() {
        assert_eq!(
            toks("What's my BALANCE?"),
            ["what", "'", "s", "my", "balance", "?"]
        );
        assert_eq!(toks("hello,world!"), ["hello", ",", "world", "!"]);
        assert_eq!(
            toks("  spaces\tand\nnewlines  "),
            ["spaces", "and", "newlines"]
        );
        assert_eq!(
            toks("\"quoted\" (paren)"),
            ["\"", "quoted", "\"", "(", "paren", ")"]
        );
    }

    #[test]
    fn keeps_numbers() {
        assert_eq!(
            toks("transfer $1,000.50 now"),
            ["transfer", "$", "1,000.50", "now"]
        );
        assert_eq!(
            toks("set alarm for 7.30am"),
            ["set", "alarm", "for", "7.30am"]
        );
        assert_eq!(toks("room 12."), ["room", "12", "."]);
        assert_eq!(toks("a,1"), ["a", ",", "1"]);
        assert_eq!(toks("flight ba2490"), ["flight", "ba2490"]);
    }

    #[test]
    fn handles_empty_and_unicode() {
        assert!(toks("").is_empty());
        assert!(toks("   ").is_empty());
        assert_eq!(toks("Café ÜBER"), ["café", "über"]);
    }

    #[test]
    fn vocab_orders_by_count_and_maps_unknown_to_zero() {
        let vocab = Vocab::build(["b a a", "c b a"]);
        assert_eq!(vocab.tokens(), ["<unk>", "a", "b", "c"]);
        assert_eq!(vocab.encode("A c zebra"), [1, 3, 0]);
        let reloaded = Vocab::from_json(&vocab.to_json().expect("json")).expect("parse");
        assert_eq!(reloaded, vocab);
    }

    #[test]
    fn extend_keeps_existing_ids() {
        let mut vocab = Vocab::build(["a b"]);
        let added = vocab.extend(["b c d d"]);
        assert_eq!(added, 2);
        assert_eq!(vocab.tokens(), ["<unk>", "a", "b", "d", "c"]);
    }

    #[test]
    fn rejects_bad_vocab_files() {
        assert!(Vocab::from_json(b"not json").is_err());
        assert!(Vocab::from_json(br#"{"tokenizer":"x","tokens":["<unk>"]}"#).is_err());
        assert!(Vocab::from_json(br#"{"tokenizer":"basic_english_v1","tokens":["a"]}"#).is_err());
        let dup = br#"{"tokenizer":"basic_english_v1","tokens":["<unk>","a","a"]}"#;
        assert!(Vocab::from_json(dup).is_err());
    }
}
