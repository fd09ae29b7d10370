//! The closed word-level vocabulary. Built once, deterministically, from every word the world can
//! print (names, values, template fragments, numbers); text is split on whitespace and
//! punctuation becomes its own token, so a value such as "1990" stands alone before its ".".

use std::collections::{BTreeSet, HashMap};

use crate::error::{KadynError, Result};

pub const PAD: &str = "<pad>";
pub const BOS: &str = "<bos>";
pub const EOS: &str = "<eos>";
pub const PAD_ID: u32 = 0;
pub const BOS_ID: u32 = 1;
pub const EOS_ID: u32 = 2;

const PUNCTUATION: &[char] = &['.', ',', ';', ':', '!', '?', '(', ')', '"'];

/// Splits text into word tokens: whitespace separates, punctuation is peeled off both ends.
pub fn split_words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in text.split_whitespace() {
        let start = word.len() - word.trim_start_matches(PUNCTUATION).len();
        let end = word.trim_end_matches(PUNCTUATION).len().max(start);
        out.extend(word[..start].chars().map(String::from));
        if end > start {
            out.push(word[start..end].to_string());
        }
        out.extend(word[end..].chars().map(String::from));
    }
    out
}

#[derive(Clone, Debug)]
pub struct Vocab {
    words: Vec<String>,
    ids: HashMap<String, u32>,
}

impl Vocab {
    /// Special tokens first (fixed ids), then every other word in sorted order.
    pub fn build<'a>(words: impl IntoIterator<Item = &'a str>) -> Self {
        let specials = [PAD, BOS, EOS];
        let rest: BTreeSet<&str> = words
            .into_iter()
            .filter(|w| !specials.contains(w))
            .collect();
        let words: Vec<String> = specials
            .iter()
            .copied()
            .chain(rest)
            .map(String::from)
            .collect();
        let ids = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.clone(), i as u32))
            .collect();
        Vocab { words, ids }
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    pub fn words(&self) -> &[String] {
        &self.words
    }

    pub fn id(&self, word: &str) -> Result<u32> {
        self.ids.get(word).copied().ok_or_else(|| {
            KadynError::not_found(
                "token",
                format!("{word:?}"),
                "words of the world's vocabulary",
            )
        })
    }

    /// Tokenizes text made only of words this vocabulary was built from.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        split_words(text).iter().map(|w| self.id(w)).collect()
    }

    /// Joins tokens with spaces, without a space before closing punctuation; `<pad>` is skipped.
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let mut out = String::new();
        for &id in ids {
            if id == PAD_ID as i64 {
                continue;
            }
            let word = usize::try_from(id)
                .ok()
                .and_then(|i| self.words.get(i))
                .ok_or_else(|| {
                    KadynError::not_found("token id", id, format!("0..{}", self.words.len()))
                })?;
            let glue = word.len() == 1 && ".,;:!?)".contains(word.as_str());
            if !out.is_empty() && !glue && !out.ends_with('(') {
                out.push(' ');
            }
            out.push_str(word);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punctuation_stands_alone() {
        assert_eq!(
            split_words("born in 1990."),
            vec!["born", "in", "1990", "."]
        );
        assert_eq!(split_words("(a), b"), vec!["(", "a", ")", ",", "b"]);
        assert_eq!(split_words("O'Brien-Smith"), vec!["O'Brien-Smith"]);
    }

    #[test]
    fn build_is_sorted_with_specials_first() {
        let v = Vocab::build(["b", "a", "b", ".", "<eos>"]);
        assert_eq!(v.words(), &["<pad>", "<bos>", "<eos>", ".", "a", "b"]);
        assert_eq!(v.id("a").unwrap(), 4);
        assert!(v.id("zzz").is_err());
    }

    #[test]
    fn decode_round_trips_simple_text() {
        let v = Vocab::build(
            split_words("Ann was born in Paris .")
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>(),
        );
        let ids: Vec<i64> = v
            .encode("Ann was born in Paris.")
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect();
        assert_eq!(v.decode(&ids).unwrap(), "Ann was born in Paris.");
        assert!(v.decode(&[999]).is_err());
    }
}
