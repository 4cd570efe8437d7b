//! `profile-id-rule`: approve listed profiles, by id or by verification words
//! (`docs/policy.md`, *`profile-id-rule`*).

use std::collections::HashSet;

use super::Args;
use crate::error::{LoadError, LoadErrorKind};
use crate::request::Request;

pub const ARGS: &[&str] = &["profile_ids"];
const MINIMUM_WORDS: usize = 4;

#[derive(Debug)]
pub struct ProfileIdRule {
    ids: HashSet<Box<[u8]>>,
    /// Word phrases; a phrase of n words matches a profile whose words begin with them.
    phrases: Vec<Vec<String>>,
}

impl ProfileIdRule {
    pub fn compile(args: &Args<'_>) -> Result<Self, LoadError> {
        let Some(arg) = args.get("profile_ids") else {
            return Err(LoadError::new(
                args.loc(),
                LoadErrorKind::Invalid("profile-id-rule needs profile_ids".into()),
            ));
        };
        let mut ids = HashSet::new();
        let mut phrases = Vec::new();
        for item in arg.list("a list of profile ids (hex) or phrases of at least 4 words")? {
            let text = item.string("a profile id in hex or a phrase of at least 4 words (quote ids made only of digits)")?;
            if text.contains(' ') {
                let words: Vec<String> = text.split(' ').map(str::to_string).collect();
                if words.iter().any(String::is_empty) {
                    return Err(item.error(LoadErrorKind::Invalid(format!(
                        "'{text}': the words of a phrase are separated by single spaces"
                    ))));
                }
                if words.len() < MINIMUM_WORDS {
                    return Err(item.error(LoadErrorKind::TooFewWords {
                        phrase: text.to_string(),
                        count: words.len(),
                    }));
                }
                phrases.push(words);
            } else {
                let id = hex::decode(text)
                    .ok()
                    .filter(|id| !id.is_empty())
                    .ok_or_else(|| {
                        item.error(LoadErrorKind::Invalid(format!(
                        "'{text}' is neither a profile id in hex (an even number of hex digits) \
                         nor a phrase of at least {MINIMUM_WORDS} words"
                    )))
                    })?;
                ids.insert(id.into_boxed_slice());
            }
        }
        Ok(ProfileIdRule { ids, phrases })
    }

    pub fn approves(&self, request: &Request) -> bool {
        self.ids.contains(request.profile_id.as_slice())
            || self.phrases.iter().any(|phrase| {
                request.profile_words.len() >= phrase.len()
                    && request.profile_words[..phrase.len()] == phrase[..]
            })
    }
}
