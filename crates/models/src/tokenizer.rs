//! Text ↔ token ids: a Hugging Face `tokenizer.json`, or a byte-level BPE tokenizer rebuilt from a
//! GGUF file's metadata.

use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper};

use crate::chat::ChatTemplate;
use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, Value};

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    /// Prepended by [`TextTokenizer::encode`] when the tokenizer itself does not add it (GGUF).
    prepend_bos: Option<u32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// The checkpoint's chat template, where it has one.
    pub chat: Option<ChatTemplate>,
}

impl TextTokenizer {
    /// A `tokenizer.json`; its own post-processor decides whether BOS is added.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let id = |tokens: &[&str]| tokens.iter().find_map(|t| inner.token_to_id(t));
        let bos = id(&["<s>", "<|begin_of_text|>", "<|startoftext|>"]);
        let eos = id(&["</s>", "<|endoftext|>", "<|end_of_text|>", "<|im_end|>"]);
        let token = |id: Option<u32>| id.and_then(|i| inner.id_to_token(i)).unwrap_or_default();
        let config = path.with_file_name("tokenizer_config.json");
        let chat = ChatTemplate::from_tokenizer_config(&config, &token(bos), &token(eos))?;
        Ok(Self { inner, path: path.to_path_buf(), prepend_bos: None, bos, eos, chat })
    }

    /// The tokenizer stored in a GGUF file's metadata. Only byte-level BPE (`tokenizer.ggml.model =
    /// gpt2`) is rebuilt; for others place a `tokenizer.json` beside the file.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let path = file.path().to_path_buf();
        let err = |message: String| ModelError::Tokenizer { path: path.clone(), message };
        let model = file.string("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(err(format!("tokenizer model `{model}` cannot be rebuilt from GGUF metadata; put its tokenizer.json beside the file")));
        }
        let tokens = file.strings("tokenizer.ggml.tokens")?;
        let mut vocab = Vocab::with_capacity(tokens.len());
        for (id, token) in tokens.iter().enumerate() {
            vocab.insert(token.clone(), id as u32);
        }
        let merges = file
            .strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| err(format!("merge `{m}` is not two tokens")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| err(e.to_string()))?;
        let byte_level = ByteLevel::new(false, true, true);
        let pre: PreTokenizerWrapper = match file.string("tokenizer.ggml.pre").unwrap_or("default") {
            "default" | "gpt2" => byte_level.into(),
            "smollm" | "starcoder" | "refact" | "codeshell" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
            other => return Err(err(format!("pre-tokenizer `{other}` is not supported (gpt2, smollm, starcoder); put a tokenizer.json beside the file"))),
        };
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre)).with_decoder(Some(ByteLevelDecoder::default()));
        if let Some(Value::Array(types)) = file.metadata.get("tokenizer.ggml.token_type") {
            // Type 3 = control token (e.g. <|endoftext|>, <|im_start|>): matched whole, never split.
            let special: Vec<AddedToken> = types
                .iter()
                .zip(&tokens)
                .filter(|(t, _)| matches!(t, Value::Int(3) | Value::Uint(3)))
                .map(|(_, tok)| AddedToken::from(tok.clone(), true))
                .collect();
            inner.add_special_tokens(&special);
        }
        let id = |key: &str| file.uint(key).ok().map(|v| v as u32);
        let (bos, eos) = (id("tokenizer.ggml.bos_token_id"), id("tokenizer.ggml.eos_token_id"));
        let add_bos =
            matches!(file.metadata.get("tokenizer.ggml.add_bos_token"), Some(Value::Bool(true)));
        let token = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize)).cloned();
        let chat = file.string("tokenizer.chat_template").ok().map(|source| {
            let (bos, eos) = (token(bos).unwrap_or_default(), token(eos).unwrap_or_default());
            ChatTemplate::new(source.to_string(), bos, eos, &path)
        });
        Ok(Self { inner, path, prepend_bos: bos.filter(|_| add_bos), bos, eos, chat })
    }

    /// Token ids of `text`, with BOS if the model's tokenizer adds one.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, self.prepend_bos.is_none()).map_err(|e| self.error(e))?;
        Ok(self.prepend_bos.into_iter().chain(enc.get_ids().iter().copied()).collect())
    }

    /// [`TextTokenizer::encode`] with each token's byte span in `text` (`(0, 0)` for BOS).
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<(usize, usize)>)> {
        let enc = self.inner.encode(text, self.prepend_bos.is_none()).map_err(|e| self.error(e))?;
        let ids = self.prepend_bos.into_iter().chain(enc.get_ids().iter().copied()).collect();
        let offsets = self
            .prepend_bos
            .map(|_| (0, 0))
            .into_iter()
            .chain(enc.get_offsets().iter().copied())
            .collect();
        Ok((ids, offsets))
    }

    /// Token ids of `text` alone: no BOS or other special tokens (for targets and continuations).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.inner.encode(text, false).map_err(|e| self.error(e))?.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| self.error(e))
    }

    /// Writes the tokenizer as a `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner.save(path, true).map_err(|e| self.error(e))
    }

    fn error(&self, e: tokenizers::Error) -> ModelError {
        ModelError::Tokenizer { path: self.path.clone(), message: e.to_string() }
    }
}
