//! The tokenizer and the vocabulary: the same functions at training and at serving time.
//!
//! Tokenization (`basic_english_v1`): lowercase; runs of letters and digits are words; a `.` or
//! `,` between two digits stays inside the number (`3.5`, `1,000`); every other non-space
//! character is a token of its own (`don't` → `don`, `'`, `t`).
//!
//! Features: the tokens, and with `NGRAMS=2` also each pair of adjacent tokens, written as the two
//! tokens joined by a space (a token never holds a space, so a pair never collides with a word).
//! The vocabulary holds `<unk>` at id 0, then the training split's features by descending
//! frequency, ties in byte order. An unknown word maps to `<unk>`; an unknown pair is left out
//! (most pairs of a new text are unseen, and a bag full of `<unk>` says little about it).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The name recorded in artifacts for the tokenization rules above.
pub const TOKENIZER_NAME: &str = "basic_english_v1";

/// The token every out-of-vocabulary word maps to; always id 0.
pub const UNK: &str = "<unk>";

/// Splits `text` into lowercase tokens.
pub fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Tokens::default();
    tokens.read(text);
    tokens.iter().map(str::to_string).collect()
}

/// The tokens of one text, as [`tokenize`] splits them, in one buffer (no allocation per token;
/// reused from text to text).
#[derive(Debug, Default)]
struct Tokens {
    chars: Vec<char>,
    text: String,
    spans: Vec<std::ops::Range<usize>>,
}

impl Tokens {
    /// Splits `text`, replacing what was held.
    fn read(&mut self, text: &str) {
        self.chars.clear();
        if text.is_ascii() {
            // The same characters as below, without the general case's per-character iterator.
            self.chars
                .extend(text.bytes().map(|b| char::from(b.to_ascii_lowercase())));
        } else {
            self.chars.extend(text.chars().flat_map(char::to_lowercase));
        }
        self.text.clear();
        self.spans.clear();
        let chars = &self.chars;
        // Where the word being read starts in `text`, and its last character.
        let mut start = 0;
        let mut last: Option<char> = None;
        for (i, &c) in chars.iter().enumerate() {
            if c.is_alphanumeric() {
                self.text.push(c);
                last = Some(c);
                continue;
            }
            let inside_number = (c == '.' || c == ',')
                && last.is_some_and(|p| p.is_ascii_digit())
                && chars.get(i + 1).is_some_and(char::is_ascii_digit);
            if inside_number {
                self.text.push(c);
                last = Some(c);
                continue;
            }
            if self.text.len() > start {
                self.spans.push(start..self.text.len());
                start = self.text.len();
                last = None;
            }
            if !c.is_whitespace() {
                self.text.push(c);
                self.spans.push(start..self.text.len());
                start = self.text.len();
            }
        }
        if self.text.len() > start {
            self.spans.push(start..self.text.len());
        }
        // Padding, so that `key` reads a fixed number of bytes from any token's start.
        self.text.push_str(PADDING);
    }

    fn len(&self) -> usize {
        self.spans.len()
    }

    /// Token `index` as a [`FeatureIds`] key.
    fn key(&self, index: usize) -> Key<'_> {
        let span = self.spans[index].clone();
        let bytes = self.text.as_bytes();
        // The text is followed by `INLINE` padding bytes (see `read`): the key is read in one
        // load of a fixed size.
        if span.len() < INLINE {
            let mut word = [0u8; INLINE];
            word.copy_from_slice(&bytes[span.start..span.start + INLINE]);
            Key::Short(inline(u128::from_le_bytes(word), span.len()))
        } else {
            Key::Long(&self.text[span])
        }
    }

    fn get(&self, index: usize) -> &str {
        &self.text[self.spans[index].clone()]
    }

    fn iter(&self) -> impl Iterator<Item = &str> {
        self.spans.iter().map(|span| &self.text[span.clone()])
    }
}

/// Features of fewer bytes than this are keys held in the table itself.
const INLINE: usize = 16;

/// `INLINE` zero bytes.
const PADDING: &str = "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

/// A feature as the vocabulary's table keys it: one of fewer than [`INLINE`] bytes as those
/// bytes (little-endian, zero above them) with its length in the top byte, so that a lookup
/// compares two integers where a `String` key would be a pointer to follow and a `memcmp` to
/// call; a longer one as its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key<'a> {
    Short(u128),
    Long(&'a str),
}

impl<'a> Key<'a> {
    fn of(feature: &'a str) -> Self {
        let bytes = feature.as_bytes();
        if bytes.len() < INLINE {
            let mut word = [0u8; INLINE];
            word[..bytes.len()].copy_from_slice(bytes);
            Key::Short(inline(u128::from_le_bytes(word), bytes.len()))
        } else {
            Key::Long(feature)
        }
    }
}

/// The [`Key::Short`] of the first `len` (under [`INLINE`]) bytes of `word`.
fn inline(word: u128, len: usize) -> u128 {
    let mask = (1u128 << (8 * len)) - 1;
    (word & mask) | ((len as u128) << 120)
}

/// Feature → id: hashbrown tables hashed with foldhash (the keys come from training data, not
/// from callers), one for the features held inline ([`Key::Short`], as two words: 24-byte
/// entries, where a `u128` would align them to 32 and an enum of both kinds to 48) and one for
/// the longer ones.
#[derive(Debug, Clone, Default)]
struct FeatureIds {
    short: hashbrown::HashTable<([u64; 2], u32)>,
    long: hashbrown::HashTable<(Box<str>, u32)>,
    hasher: foldhash::fast::FixedState,
}

/// A [`Key::Short`] as two words.
fn words(key: u128) -> [u64; 2] {
    [key as u64, (key >> 64) as u64]
}

impl FeatureIds {
    fn get(&self, key: Key<'_>) -> Option<u32> {
        use std::hash::BuildHasher;
        match key {
            Key::Short(key) => {
                let kept = words(key);
                self.short
                    .find(self.hasher.hash_one(key), |(k, _)| *k == kept)
                    .map(|&(_, id)| id)
            }
            Key::Long(text) => self
                .long
                .find(self.hasher.hash_one(text), |(k, _)| **k == *text)
                .map(|&(_, id)| id),
        }
    }

    /// Sets `feature`'s id unless it has one: returns whether it was new (a duplicate keeps
    /// the first id and is not counted by `len`).
    fn insert(&mut self, feature: &str, id: u32) -> bool {
        use std::hash::BuildHasher;
        let key = Key::of(feature);
        if self.get(key).is_some() {
            return false;
        }
        let hasher = &self.hasher;
        match key {
            Key::Short(key) => {
                self.short
                    .insert_unique(hasher.hash_one(key), (words(key), id), |(k, _)| {
                        hasher.hash_one(u128::from(k[0]) | (u128::from(k[1]) << 64))
                    });
            }
            Key::Long(text) => {
                self.long
                    .insert_unique(hasher.hash_one(text), (text.into(), id), |(k, _)| {
                        hasher.hash_one(&**k)
                    });
            }
        }
        true
    }

    fn len(&self) -> usize {
        self.short.len() + self.long.len()
    }
}

/// The pairs of a vocabulary as encoding looks them up: a pair `a b` whose words are both
/// features, by the two words' ids (16-byte entries; no text to join, hash and compare).
#[derive(Debug, Clone, Default)]
struct PairIds {
    /// `(id of a) << 32 | (id of b)` → the pair's id.
    table: hashbrown::HashTable<(u64, u32)>,
    /// Whether some pair's words are not both features: encoding then looks a pair with an
    /// unknown word up by its text.
    by_text: bool,
    hasher: foldhash::fast::FixedState,
}

impl PairIds {
    /// The pairs among `tokens` (ids in order), their words looked up in `ids`.
    fn new(tokens: &[String], ids: &FeatureIds) -> Self {
        use std::hash::BuildHasher;
        let mut pairs = Self::default();
        for (id, feature) in tokens.iter().enumerate() {
            // Only `a b` with neither side empty nor holding a space can be a text's pair.
            let Some((a, b)) = feature.split_once(' ') else {
                continue;
            };
            if a.is_empty() || b.is_empty() || b.contains(' ') {
                continue;
            }
            match (ids.get(Key::of(a)), ids.get(Key::of(b))) {
                (Some(a), Some(b)) if a != 0 && b != 0 => {
                    let key = pair_key(a, b);
                    let hasher = &pairs.hasher;
                    pairs
                        .table
                        .insert_unique(hasher.hash_one(key), (key, id as u32), |(k, _)| {
                            hasher.hash_one(*k)
                        });
                }
                _ => pairs.by_text = true,
            }
        }
        pairs
    }

    /// The id of the pair of the words with ids `a` and `b` (both known).
    fn get(&self, a: u32, b: u32) -> Option<u32> {
        use std::hash::BuildHasher;
        let key = pair_key(a, b);
        self.table
            .find(self.hasher.hash_one(key), |(k, _)| *k == key)
            .map(|&(_, id)| id)
    }
}

fn pair_key(a: u32, b: u32) -> u64 {
    (u64::from(a) << 32) | u64::from(b)
}

/// Reusable buffers of [`Vocab::encode_into`].
#[derive(Debug, Default)]
pub struct EncodeScratch {
    tokens: Tokens,
    pair: String,
}

/// The longest n-grams a vocabulary may hold (`NGRAMS`).
pub const MAX_NGRAMS: usize = 2;

/// The features of `text`: its tokens, then (with `ngrams` 2) its pairs of adjacent tokens.
pub fn features(text: &str, ngrams: usize) -> Vec<String> {
    let tokens = tokenize(text);
    if ngrams < 2 {
        return tokens;
    }
    let pairs: Vec<String> = tokens
        .windows(2)
        .map(|w| format!("{} {}", w[0], w[1]))
        .collect();
    let mut all = tokens;
    all.extend(pairs);
    all
}

/// Feature ↔ id mapping of a trained model.
#[derive(Debug, Clone)]
pub struct Vocab {
    tokens: Vec<String>,
    /// Feature → id.
    ids: FeatureIds,
    /// The pairs by their words' ids, for encoding.
    pairs: PairIds,
    ngrams: usize,
}

/// `vocab.json`: the tokenizer's name, the n-gram length (absent, as in files written before
/// n-grams existed, means 1) and the features in id order.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VocabFile {
    tokenizer: String,
    #[serde(default = "unigrams", skip_serializing_if = "is_unigrams")]
    ngrams: usize,
    tokens: Vec<String>,
}

fn unigrams() -> usize {
    1
}

fn is_unigrams(ngrams: &usize) -> bool {
    *ngrams == 1
}

/// Vocabularies are equal when their features and n-gram length are (the table follows from
/// the features).
impl PartialEq for Vocab {
    fn eq(&self, other: &Self) -> bool {
        self.tokens == other.tokens && self.ngrams == other.ngrams
    }
}

impl Eq for Vocab {}

impl Vocab {
    /// The vocabulary of `texts` with n-grams up to `ngrams` (1 or 2): `<unk>`, then every
    /// feature by descending count.
    pub fn build<'a>(texts: impl IntoIterator<Item = &'a str>, ngrams: usize) -> Self {
        let ngrams = ngrams.clamp(1, MAX_NGRAMS);
        let mut counts: HashMap<String, usize> = HashMap::new();
        for text in texts {
            for feature in features(text, ngrams) {
                *counts.entry(feature).or_default() += 1;
            }
        }
        counts.remove(UNK);
        let mut by_count: Vec<(String, usize)> = counts.into_iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let tokens = std::iter::once(UNK.to_string())
            .chain(by_count.into_iter().map(|(token, _)| token))
            .collect();
        Self::from_tokens(tokens, ngrams)
    }

    fn from_tokens(tokens: Vec<String>, ngrams: usize) -> Self {
        let mut ids = FeatureIds::default();
        for (id, token) in tokens.iter().enumerate() {
            ids.insert(token, id as u32);
        }
        let pairs = PairIds::new(&tokens, &ids);
        Self {
            tokens,
            ids,
            pairs,
            ngrams,
        }
    }

    /// Adds the features of `texts` that are not known yet, after the existing ones (existing
    /// ids never change, so a fine-tuned model keeps its base model's embedding rows), with this
    /// vocabulary's n-gram length. Returns how many were added.
    pub fn extend<'a>(&mut self, texts: impl IntoIterator<Item = &'a str>) -> usize {
        let fresh = Self::build(texts, self.ngrams);
        let before = self.tokens.len();
        for token in fresh.tokens.into_iter().skip(1) {
            if self.ids.insert(&token, self.tokens.len() as u32) {
                self.tokens.push(token);
            }
        }
        // A new word can make an older pair one of known words.
        self.pairs = PairIds::new(&self.tokens, &self.ids);
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

    /// The longest n-grams among the features (1: words only, 2: words and pairs).
    pub fn ngrams(&self) -> usize {
        self.ngrams
    }

    /// The id of `token`, `<unk>`'s (0) when unknown.
    pub fn id(&self, token: &str) -> u32 {
        self.ids.get(Key::of(token)).unwrap_or(0)
    }

    /// The feature ids of `text`: each word's (`<unk>` when unknown), then each known pair's.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        self.encode_into(text, &mut EncodeScratch::default(), &mut ids);
        ids
    }

    /// [`Vocab::encode`] into `ids` (replacing what it held), with buffers reused from call to
    /// call: serving encodes one document per request.
    pub fn encode_into(&self, text: &str, scratch: &mut EncodeScratch, ids: &mut Vec<u32>) {
        let EncodeScratch { tokens, pair } = scratch;
        tokens.read(text);
        ids.clear();
        ids.extend((0..tokens.len()).map(|i| self.ids.get(tokens.key(i)).unwrap_or(0)));
        if self.ngrams >= 2 && tokens.len() >= 2 {
            for i in 1..tokens.len() {
                let (a, b) = (ids[i - 1], ids[i]);
                let id = if a != 0 && b != 0 {
                    self.pairs.get(a, b)
                } else if self.pairs.by_text {
                    pair.clear();
                    pair.push_str(tokens.get(i - 1));
                    pair.push(' ');
                    pair.push_str(tokens.get(i));
                    self.ids.get(Key::of(pair))
                } else {
                    None
                };
                if let Some(id) = id {
                    ids.push(id);
                }
            }
        }
    }

    /// The features in id order.
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// The `vocab.json` form.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let file = VocabFile {
            tokenizer: TOKENIZER_NAME.to_string(),
            ngrams: self.ngrams,
            tokens: self.tokens.clone(),
        };
        serde_json::to_vec(&file).map_err(|e| Error::Artifact(format!("vocab.json: {e}")))
    }

    /// Parses `vocab.json`, checking the tokenizer name, the n-gram length, `<unk>` at id 0 and
    /// unique features.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let file: VocabFile = serde_json::from_slice(bytes)
            .map_err(|e| Error::Artifact(format!("vocab.json: {e}")))?;
        if file.tokenizer != TOKENIZER_NAME {
            return Err(Error::Artifact(format!(
                "vocab.json: unknown tokenizer {:?}",
                file.tokenizer
            )));
        }
        if !(1..=MAX_NGRAMS).contains(&file.ngrams) {
            return Err(Error::Artifact(format!(
                "vocab.json: ngrams {} is not 1 or 2",
                file.ngrams
            )));
        }
        if file.tokens.first().map(String::as_str) != Some(UNK) {
            return Err(Error::Artifact("vocab.json: token 0 must be <unk>".into()));
        }
        let vocab = Self::from_tokens(file.tokens, file.ngrams);
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
        let vocab = Vocab::build(["b a a", "c b a"], 1);
        assert_eq!(vocab.tokens(), ["<unk>", "a", "b", "c"]);
        assert_eq!(vocab.encode("A c zebra"), [1, 3, 0]);
        let json = vocab.to_json().expect("json");
        assert!(!String::from_utf8_lossy(&json).contains("ngrams"));
        let reloaded = Vocab::from_json(&json).expect("parse");
        assert_eq!(reloaded, vocab);
    }

    #[test]
    fn bigrams_are_features_and_unknown_pairs_are_left_out() {
        assert_eq!(
            features("Hi there, you", 2)[4..],
            ["hi there", "there ,", ", you"]
        );
        let vocab = Vocab::build(["b a a", "c b a"], 2);
        assert_eq!(vocab.ngrams(), 2);
        assert_eq!(
            vocab.tokens(),
            ["<unk>", "a", "b", "b a", "a a", "c", "c b"]
        );
        assert_eq!(vocab.encode("c b zebra a a"), [5, 2, 0, 1, 1, 6, 4]);
        let json = vocab.to_json().expect("json");
        let reloaded = Vocab::from_json(&json).expect("parse");
        assert_eq!(reloaded, vocab);
        assert_eq!(reloaded.encode("b a"), [2, 1, 3]);
    }

    /// Features short enough to be held inline and longer ones, on either side of the limit
    /// and with bytes of every kind, map to the ids a plain map of their texts gives.
    #[test]
    fn every_feature_length_finds_its_id() {
        let words: Vec<String> = (1..=34)
            .map(|len| {
                (0..len)
                    .map(|i| char::from(b'a' + ((len * 7 + i) % 26) as u8))
                    .collect()
            })
            .chain(["é", "größe", "naïveté", "ab\0c", "日本語のテキスト"].map(String::from))
            .collect();
        let texts: Vec<String> = words.windows(3).map(|w| w.join(" ")).collect();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        for ngrams in [1, 2] {
            let vocab = Vocab::build(texts.iter().copied(), ngrams);
            let plain: HashMap<&str, u32> = vocab
                .tokens()
                .iter()
                .enumerate()
                .map(|(id, token)| (token.as_str(), id as u32))
                .collect();
            for token in vocab.tokens() {
                assert_eq!(vocab.id(token), plain[token.as_str()], "{token:?}");
            }
            // Each text, and each text with a word the vocabulary lacks.
            for text in texts.iter().map(|t| t.to_string()).chain(
                texts
                    .iter()
                    .map(|t| format!("{t} zzzzzzzzzzzzzzz zzzzzzzzzzzzzzzz")),
            ) {
                let expected: Vec<u32> = features(&text, 1)
                    .iter()
                    .map(|f| plain.get(f.as_str()).copied().unwrap_or(0))
                    .chain(
                        features(&text, ngrams)
                            .iter()
                            .skip(tokenize(&text).len())
                            .filter_map(|f| plain.get(f.as_str()).copied()),
                    )
                    .collect();
                assert_eq!(vocab.encode(&text), expected, "{text:?}");
            }
        }
    }

    /// A pair whose words are not both features (a vocab.json written by hand can hold one)
    /// is still found, by its text; once its words are added, by their ids.
    #[test]
    fn pairs_of_unknown_words_are_found_by_their_text() {
        let json = br#"{"tokenizer":"basic_english_v1","ngrams":2,
            "tokens":["<unk>","a","b c","a b","x  y"," a"]}"#;
        let mut vocab = Vocab::from_json(json).expect("parse");
        assert!(vocab.pairs.by_text);
        assert_eq!(vocab.encode("a b c"), [1, 0, 0, 3, 2]);
        assert_eq!(vocab.encode("x y a"), [0, 0, 1]);
        assert_eq!(vocab.extend(["b c"]), 2);
        assert_eq!(&vocab.tokens()[6..], ["b", "c"]);
        assert!(!vocab.pairs.by_text);
        assert_eq!(vocab.encode("a b c"), [1, 6, 7, 3, 2]);
    }

    #[test]
    fn files_without_ngrams_are_unigram_vocabularies() {
        let old = br#"{"tokenizer":"basic_english_v1","tokens":["<unk>","a","b"]}"#;
        let vocab = Vocab::from_json(old).expect("parse");
        assert_eq!(vocab.ngrams(), 1);
        assert_eq!(vocab.encode("a b c"), [1, 2, 0]);
        let three = br#"{"tokenizer":"basic_english_v1","ngrams":3,"tokens":["<unk>"]}"#;
        assert!(Vocab::from_json(three).is_err());
    }

    #[test]
    fn extend_keeps_existing_ids() {
        let mut vocab = Vocab::build(["a b"], 1);
        let added = vocab.extend(["b c d d"]);
        assert_eq!(added, 2);
        assert_eq!(vocab.tokens(), ["<unk>", "a", "b", "d", "c"]);
        let mut pairs = Vocab::build(["a b"], 2);
        assert_eq!(pairs.extend(["b c"]), 2);
        assert_eq!(pairs.tokens()[4..], ["b c", "c"]);
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
