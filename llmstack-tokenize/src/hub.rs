//! Finding a model's tokenizer files in the Hugging Face hub cache.
//!
//! The layout `huggingface_hub` downloads into:
//!
//! ```text
//! {cache}/models--{org}--{name}/refs/main            the revision `main` points at
//! {cache}/models--{org}--{name}/snapshots/{rev}/     the files of one revision (symlinks to blobs/)
//! ```

use std::path::{Path, PathBuf};

/// The Hugging Face hub cache directory, as `huggingface_hub` resolves it: `HF_HUB_CACHE`,
/// else `HF_HOME/hub`, else `XDG_CACHE_HOME/huggingface/hub`, else
/// `~/.cache/huggingface/hub`. `None` without any of these variables (no home).
pub fn hf_cache_root() -> Option<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HF_HUB_CACHE")
        .or_else(|| var("HF_HOME").map(|home| home.join("hub")))
        .or_else(|| var("XDG_CACHE_HOME").map(|cache| cache.join("huggingface").join("hub")))
        .or_else(|| var("HOME").map(|home| home.join(".cache").join("huggingface").join("hub")))
}

/// The snapshot directory of `model_id` (`org/name`) in the hub cache under `cache_root`
/// (default: [`hf_cache_root`]) that holds a `tokenizer.json`: the revision `refs/main`
/// names if its snapshot has one, else the most recently modified snapshot that has one.
/// `None` when the model is not cached or no snapshot has a tokenizer.
pub fn find_in_hf_cache(model_id: &str, cache_root: Option<&Path>) -> Option<PathBuf> {
    let root = match cache_root {
        Some(root) => root.to_path_buf(),
        None => hf_cache_root()?,
    };
    let id = model_id.trim_matches('/');
    if id.is_empty()
        || id
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return None;
    }
    let repo = root.join(format!("models--{}", id.replace('/', "--")));
    let snapshots = repo.join("snapshots");
    let has_tokenizer = |dir: &Path| dir.join("tokenizer.json").is_file();

    if let Ok(rev) = std::fs::read_to_string(repo.join("refs").join("main")) {
        let rev = rev.trim();
        if !rev.is_empty() && !rev.contains(['/', '\\']) && rev != ".." {
            let dir = snapshots.join(rev);
            if has_tokenizer(&dir) {
                return Some(dir);
            }
        }
    }
    std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(Result::ok)
        .filter(|entry| has_tokenizer(&entry.path()))
        .filter_map(|entry| Some((entry.metadata().ok()?.modified().ok()?, entry.path())))
        .max()
        .map(|(_, path)| path)
}
