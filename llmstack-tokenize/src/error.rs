//! The one error type of the crate.

use std::fmt;
use std::path::PathBuf;

/// Why a tokenizer could not be loaded, or a prompt not rendered or encoded.
#[derive(Debug)]
#[non_exhaustive]
pub enum TokenizerError {
    /// A file could not be read.
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A file was read but its content is not what it should be (not JSON, a field of
    /// the wrong type, a chat-template list without a default).
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The `tokenizers` library rejected `tokenizer.json`.
    Tokenizer {
        /// The file, when the tokenizer came from one.
        path: Option<PathBuf>,
        /// The library's message.
        message: String,
    },
    /// The chat template does not compile.
    Template {
        /// The template engine's message (with the line).
        message: String,
    },
    /// The model has no chat template, so chat requests cannot be rendered.
    NoChatTemplate,
    /// The messages could not be rendered: not the shape vLLM accepts, content this
    /// crate does not render (images, audio), or the template raised an error.
    Render {
        /// What went wrong.
        message: String,
    },
    /// The tokenizer failed on a text.
    Encode {
        /// The library's message.
        message: String,
    },
    /// No tokenizer files for a model: not in the Hugging Face cache, or the directory
    /// has no `tokenizer.json`.
    NotFound {
        /// The model id looked up.
        model: String,
        /// Where it was looked for.
        searched: Option<PathBuf>,
    },
}

impl TokenizerError {
    pub(crate) fn invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::InvalidFile {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn render(message: impl Into<String>) -> Self {
        Self::Render {
            message: message.into(),
        }
    }
}

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            Self::InvalidFile { path, message } => write!(f, "{}: {message}", path.display()),
            Self::Tokenizer {
                path: Some(path),
                message,
            } => write!(
                f,
                "{}: not a tokenizer the tokenizers library can load: {message}",
                path.display()
            ),
            Self::Tokenizer {
                path: None,
                message,
            } => write!(f, "tokenizer: {message}"),
            Self::Template { message } => {
                write!(f, "the chat template does not compile: {message}")
            }
            Self::NoChatTemplate => f.write_str("the model has no chat template"),
            Self::Render { message } => write!(f, "cannot render the chat: {message}"),
            Self::Encode { message } => write!(f, "cannot encode the prompt: {message}"),
            Self::NotFound {
                model,
                searched: Some(path),
            } => write!(f, "no tokenizer for {model:?} under {}", path.display()),
            Self::NotFound {
                model,
                searched: None,
            } => write!(
                f,
                "no tokenizer for {model:?}: no Hugging Face cache directory (set HF_HUB_CACHE or HF_HOME)"
            ),
        }
    }
}

impl std::error::Error for TokenizerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
