//! Router-side tokenization (work in progress, issue 15).
