//! A tiny BERT with seeded random weights and a WordPiece tokenizer over a given word list,
//! written as an encoder directory (`config.json`, `model.safetensors`, `tokenizer.json`,
//! `vocab.txt`):
//! the whole encoder path (import, training in both modes, serving) in a fraction of a second,
//! for tests and demos. It knows nothing; a head trained on it learns from the words alone.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::bert::BertModel;
use tokenizers::Tokenizer;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::template::TemplateProcessing;

use super::{CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE};
use crate::error::{Error, Result};
use crate::rng::{SplitMix64, Stream};

/// Special tokens, at ids 0..4 as in BERT's vocabularies' conventions used here.
const SPECIAL: [&str; 4] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"];

/// Writes a tiny encoder (`hidden` wide, 2 layers, 2 heads) whose vocabulary is the lowercase
/// words of `texts`, with weights drawn from `seed`.
pub fn write(dir: &Path, texts: &[&str], hidden: usize, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut words = BTreeSet::new();
    for text in texts {
        for word in text
            .to_lowercase()
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            words.insert(word.to_string());
        }
    }
    let mut vocab: HashMap<String, u32> = HashMap::new();
    for token in SPECIAL.iter().map(|s| s.to_string()).chain(words) {
        let id = vocab.len() as u32;
        vocab.entry(token).or_insert(id);
    }
    let config = serde_json::json!({
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": hidden * 2,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 128,
        "model_type": "bert",
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "type_vocab_size": 2,
        "vocab_size": vocab.len(),
    });
    let path = dir.join(CONFIG_FILE);
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&config).unwrap_or_default(),
    )
    .map_err(|e| Error::io(&path, e))?;
    let bert_config = serde_json::from_value(config)
        .map_err(|e| Error::Pretrained(format!("tiny config: {e}")))?;

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    BertModel::load(vb, &bert_config)?;
    let mut rng = SplitMix64::new(seed, Stream::Init);
    let mut names: Vec<String> = varmap
        .data()
        .lock()
        .map_err(|_| Error::Stopped("variable map lock poisoned".into()))?
        .keys()
        .cloned()
        .collect();
    names.sort();
    let mut seeded = varmap.clone();
    for name in names {
        let shape = {
            let vars = varmap
                .data()
                .lock()
                .map_err(|_| Error::Stopped("variable map lock poisoned".into()))?;
            vars[&name].as_tensor().dims().to_vec()
        };
        let count: usize = shape.iter().product();
        let values: Vec<f32> = if name.contains("LayerNorm.weight") {
            vec![1.0; count]
        } else if name.contains("LayerNorm.bias") || name.ends_with(".bias") {
            vec![0.0; count]
        } else {
            (0..count).map(|_| rng.uniform(-0.2, 0.2)).collect()
        };
        seeded.set_one(
            &name,
            Tensor::from_vec(values, shape.as_slice(), &Device::Cpu)?,
        )?;
    }
    let path = dir.join(WEIGHTS_FILE);
    seeded
        .save(&path)
        .map_err(|e| Error::Pretrained(format!("{}: {e}", path.display())))?;

    let mut tokens: Vec<(&String, &u32)> = vocab.iter().collect();
    tokens.sort_by_key(|(_, id)| **id);
    let vocab_path = dir.join("vocab.txt");
    let listing: String = tokens
        .iter()
        .map(|(token, _)| format!("{token}\n"))
        .collect();
    std::fs::write(&vocab_path, listing).map_err(|e| Error::io(&vocab_path, e))?;
    let vocab_file = vocab_path.to_string_lossy().into_owned();
    let wordpiece = WordPiece::from_file(&vocab_file)
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| Error::Pretrained(format!("tiny tokenizer: {e}")))?;
    let mut tokenizer = Tokenizer::new(wordpiece);
    tokenizer.with_normalizer(Some(BertNormalizer::default()));
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    let template = TemplateProcessing::builder()
        .try_single("[CLS] $A [SEP]")
        .map_err(|e| Error::Pretrained(format!("tiny tokenizer: {e}")))?
        .special_tokens(vec![("[CLS]", 2), ("[SEP]", 3)])
        .build()
        .map_err(|e| Error::Pretrained(format!("tiny tokenizer: {e}")))?;
    tokenizer.with_post_processor(Some(template));
    let path = dir.join(TOKENIZER_FILE);
    tokenizer
        .save(&path, false)
        .map_err(|e| Error::Pretrained(format!("{}: {e}", path.display())))?;
    Ok(())
}
