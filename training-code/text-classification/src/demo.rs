//! A small generated intent dataset in the snapshot format, for demos and tests that must not
//! depend on downloaded data: five intents, each sentence two of its intent's keywords among
//! shared filler words, some with commas and quotes to exercise the CSV quoting.

use crate::rng::{SplitMix64, Stream};

const INTENTS: [(&str, [&str; 6]); 5] = [
    (
        "balance",
        [
            "balance", "money", "account", "funds", "savings", "checking",
        ],
    ),
    (
        "transfer",
        ["transfer", "send", "wire", "move", "pay", "deposit"],
    ),
    (
        "weather",
        ["weather", "rain", "sunny", "forecast", "cold", "umbrella"],
    ),
    (
        "alarm",
        ["alarm", "wake", "timer", "remind", "morning", "clock"],
    ),
    (
        "music",
        ["play", "song", "music", "album", "playlist", "volume"],
    ),
];

const FILLERS: [&str; 12] = [
    "please", "can", "you", "my", "the", "now", "i", "want", "to", "tell", "me", "today",
];

/// A generated snapshot: the contents of `examples.csv` and `labels.csv`.
#[derive(Debug, Clone)]
pub struct DemoSnapshot {
    /// `"<utterance>","<id>"` rows.
    pub examples_csv: String,
    /// `"<id>","<label>"` rows.
    pub labels_csv: String,
}

/// `per_label` examples for each of the five intents, shuffled with `seed`.
pub fn snapshot(per_label: usize, seed: u64) -> DemoSnapshot {
    let mut rng = SplitMix64::new(seed, Stream::Split);
    let mut rows = Vec::new();
    for (id, (_, keywords)) in INTENTS.iter().enumerate() {
        for i in 0..per_label {
            let mut words: Vec<&str> = (0..rng.below(3))
                .map(|_| FILLERS[rng.below(FILLERS.len())])
                .collect();
            words.push(keywords[rng.below(keywords.len())]);
            words.push(keywords[rng.below(keywords.len())]);
            rng.shuffle(&mut words);
            let mut text = words.join(" ");
            match i % 7 {
                0 => text.push_str(", thanks"),
                1 => text = format!("\"{text}\" she said"),
                _ => {}
            }
            rows.push((quote(&text), id + 1));
        }
    }
    rng.shuffle(&mut rows);
    let examples_csv = rows
        .iter()
        .map(|(text, id)| format!("{text},\"{id}\"\n"))
        .collect();
    let labels_csv = INTENTS
        .iter()
        .enumerate()
        .map(|(i, (name, _))| format!("\"{}\",{}\n", i + 1, quote(name)))
        .collect();
    DemoSnapshot {
        examples_csv,
        labels_csv,
    }
}

fn quote(field: &str) -> String {
    format!("\"{}\"", field.replace('"', "\"\""))
}

/// Every word the generated sentences use (the vocabulary of a tiny test encoder).
pub fn words() -> Vec<&'static str> {
    let mut words: Vec<&'static str> = INTENTS
        .iter()
        .flat_map(|(_, keywords)| keywords.iter().copied())
        .chain(FILLERS)
        .chain(["thanks", "she", "said"])
        .collect();
    words.sort_unstable();
    words.dedup();
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;

    #[test]
    fn demo_snapshot_parses() {
        let demo = snapshot(10, 1);
        let data = Dataset::parse(&demo.examples_csv, &demo.labels_csv).expect("parses");
        assert_eq!(data.labels.len(), 5);
        assert_eq!(data.examples.len(), 50);
        assert!(data.examples.iter().any(|e| e.text.contains('"')));
    }
}
