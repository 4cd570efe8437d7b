//! The targets, one module per kind of input.

pub mod ciphertext;
pub mod db_uri;
pub mod documents;
pub mod key_material;
pub mod request;

/// The longest error message a target accepts: an error names what is wrong and echoes
/// at most a bounded excerpt of the input, however long the input is.
pub const MAX_ERROR_LEN: usize = 400;

/// Panics when an error message echoes an unbounded part of the input.
pub fn assert_bounded(what: &str, message: &str) {
    assert!(
        message.len() <= MAX_ERROR_LEN,
        "{what}: a {}-byte error message (at most {MAX_ERROR_LEN}): {}...",
        message.len(),
        message.chars().take(200).collect::<String>()
    );
}
