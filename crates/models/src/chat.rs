//! A checkpoint's chat template: the Jinja text that turns messages into the prompt an
//! instruction-tuned model was trained on (`tokenizer.chat_template` in GGUF metadata,
//! `chat_template` in a Hugging Face `tokenizer_config.json`), rendered as transformers'
//! `apply_chat_template` renders it, with minijinja.

use std::path::{Path, PathBuf};

use minijinja::{context, Environment, Error, ErrorKind};

use crate::error::{ModelError, Result};

#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
    /// Where the template was read, for errors.
    path: PathBuf,
}

impl ChatTemplate {
    pub fn new(source: String, bos_token: String, eos_token: String, path: &Path) -> Self {
        Self { source, bos_token, eos_token, path: path.to_path_buf() }
    }

    /// The template of a `tokenizer_config.json` (a string, or a list of named templates of
    /// which `default` is taken); `None` when it has none.
    pub fn from_tokenizer_config(path: &Path, bos: &str, eos: &str) -> Result<Option<Self>> {
        let Ok(text) = std::fs::read_to_string(path) else { return Ok(None) };
        let config: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Input(format!("{}: {e}", path.display())))?;
        let source = match &config["chat_template"] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(named) => named
                .iter()
                .find(|t| t["name"] == "default")
                .and_then(|t| t["template"].as_str().map(str::to_string)),
            _ => None,
        };
        Ok(source.map(|s| Self::new(s, bos.to_string(), eos.to_string(), path)))
    }

    /// `text` as the user's one turn, followed by the opening of the assistant's answer
    /// (`add_generation_prompt`): the model's answer is what comes next.
    pub fn user_turn(&self, text: &str) -> Result<String> {
        let mut env = Environment::new();
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        let error =
            |e: Error| ModelError::Input(format!("{}: chat template: {e:#}", self.path.display()));
        let template = env.template_from_str(&self.source).map_err(error)?;
        template
            .render(context! {
                messages => vec![context! { role => "user", content => text }],
                add_generation_prompt => true,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M-Instruct's template (its GGUF metadata), rendered by transformers 5.25 for one
    /// user message with `add_generation_prompt=True`.
    #[test]
    fn smollm2_template_renders_as_transformers_does() {
        let source = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
        let chat = ChatTemplate::new(
            source.into(),
            "<|im_start|>".into(),
            "<|im_end|>".into(),
            Path::new("t"),
        );
        assert_eq!(
            chat.user_turn("who has the {}?").unwrap(),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
             Face<|im_end|>\n<|im_start|>user\nwho has the {}?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn template_errors_name_the_file() {
        let chat = ChatTemplate::new(
            "{{ raise_exception('only user turns') }}".into(),
            String::new(),
            String::new(),
            Path::new("dir/tokenizer_config.json"),
        );
        let err = chat.user_turn("q").unwrap_err().to_string();
        assert!(
            err.contains("dir/tokenizer_config.json: chat template")
                && err.contains("only user turns"),
            "{err}"
        );
        let broken =
            ChatTemplate::new("{% for %}".into(), String::new(), String::new(), Path::new("x"));
        assert!(broken.user_turn("q").is_err());
    }
}
