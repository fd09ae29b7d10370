//! Sentence templates, 25 per attribute type (`data/templates.json`). A template is stored
//! pre-tokenized as three fragments around the name and the value, so that rendering a sentence is
//! concatenation of token slices.

use std::collections::BTreeMap;

use crate::attribute::{Attribute, N_ATTRIBUTES};
use crate::error::{KadynError, Result};
use crate::vocab::{split_words, Vocab};

const TEMPLATES_JSON: &str = include_str!("../data/templates.json");
pub const TEMPLATES_PER_ATTRIBUTE: usize = 25;
pub const TRAIN_TEMPLATES: usize = 20;
pub const EVAL_TEMPLATES: usize = TEMPLATES_PER_ATTRIBUTE - TRAIN_TEMPLATES;

/// The text of one template cut at its two placeholders.
#[derive(Clone, Debug)]
pub struct TemplateText {
    pub text: String,
    pub before_name: String,
    pub between: String,
    pub after_value: String,
}

/// A template as token ids.
#[derive(Clone, Debug)]
pub struct Template {
    pub before_name: Vec<u32>,
    pub between: Vec<u32>,
    pub after_value: Vec<u32>,
}

fn cut(text: &str) -> Result<TemplateText> {
    let bad =
        |why: &str| KadynError::bad_data("templates.json", format!("template {text:?} {why}"));
    if text.matches("{name}").count() != 1 || text.matches("{value}").count() != 1 {
        return Err(bad("must hold {name} and {value} exactly once"));
    }
    let (before_name, rest) = text.split_once("{name}").expect("checked above");
    let (between, after_value) = rest
        .split_once("{value}")
        .ok_or_else(|| bad("must place {name} before {value}"))?;
    Ok(TemplateText {
        text: text.to_string(),
        before_name: before_name.to_string(),
        between: between.to_string(),
        after_value: after_value.to_string(),
    })
}

/// Parses and checks the shipped templates: 25 per attribute, placeholders in order.
pub fn template_texts() -> Result<[Vec<TemplateText>; N_ATTRIBUTES]> {
    let parsed: BTreeMap<String, Vec<String>> = serde_json::from_str(TEMPLATES_JSON)
        .map_err(|e| KadynError::bad_data("templates.json", e))?;
    let mut out: [Vec<TemplateText>; N_ATTRIBUTES] = Default::default();
    for attr in Attribute::ALL {
        let list = parsed.get(attr.name()).ok_or_else(|| {
            KadynError::bad_data("templates.json", format!("missing {}", attr.name()))
        })?;
        if list.len() != TEMPLATES_PER_ATTRIBUTE {
            return Err(KadynError::bad_data(
                "templates.json",
                format!(
                    "{} has {} templates, expected {TEMPLATES_PER_ATTRIBUTE}",
                    attr.name(),
                    list.len()
                ),
            ));
        }
        out[attr as usize] = list.iter().map(|t| cut(t)).collect::<Result<_>>()?;
    }
    Ok(out)
}

/// Every word the templates can print, for building the vocabulary.
pub fn template_words(texts: &[Vec<TemplateText>; N_ATTRIBUTES]) -> Vec<String> {
    texts
        .iter()
        .flatten()
        .flat_map(|t| {
            [&t.before_name, &t.between, &t.after_value]
                .into_iter()
                .flat_map(|s| split_words(s))
        })
        .collect()
}

pub fn tokenize(
    texts: &[Vec<TemplateText>; N_ATTRIBUTES],
    vocab: &Vocab,
) -> Result<[Vec<Template>; N_ATTRIBUTES]> {
    let mut out: [Vec<Template>; N_ATTRIBUTES] = Default::default();
    for (slot, list) in out.iter_mut().zip(texts) {
        *slot = list
            .iter()
            .map(|t| {
                Ok(Template {
                    before_name: vocab.encode(&t.before_name)?,
                    between: vocab.encode(&t.between)?,
                    after_value: vocab.encode(&t.after_value)?,
                })
            })
            .collect::<Result<_>>()?;
    }
    Ok(out)
}
