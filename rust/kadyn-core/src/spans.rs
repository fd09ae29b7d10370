//! The stream's fast path for writing biographies: every template fragment and every value's
//! tokens as a span of one arena, so that a sentence is written straight into its row with four
//! fixed-width copies (a copy may run past the span's end: the next write, or the row's padding,
//! covers what it spilled).
//!
//! A sentence is `before_name | name | between | value | after_value`. The fragments come from the
//! (attribute, template), the name from the individual, the value from (attribute, value): 51 KiB
//! of spans for the default pools, whatever the population. A table of every (individual,
//! template) sentence pre-rendered (10.8 tokens a sentence on average, 150 sentences an
//! individual, 5 bytes a token) would take 9 MiB for 1,000 individuals and 565 MiB for the
//! paper's 64,000, and miss the cache on nearly every sentence. The output is byte-identical to
//! [`World::render_biography`](crate::World::render_biography), the reference this module is
//! tested against.

use std::mem::MaybeUninit;

use crate::attribute::{Attribute, N_ATTRIBUTES};
use crate::error::{KadynError, Result};
use crate::templates::{Template, TEMPLATES_PER_ATTRIBUTE};
use crate::vocab::{BOS_ID, EOS_ID};
use crate::world::SentenceDraws;

/// Tokens a lane copy moves (32 bytes of ids).
pub const LANE: usize = 8;
/// Tokens copied for a template's skeleton, a value and an `after_value`, whatever their length:
/// fixed widths make each copy a few straight moves, no loop and no branch on the length.
/// The shipped data's longest are 12, 7 and 1 tokens ([`SpanTable::new`] refuses longer ones).
const SKELETON_TOKENS: usize = 2 * LANE;
const VALUE_TOKENS: usize = LANE;
const AFTER_TOKENS: usize = LANE;
/// How far past a biography's end writing it may reach: the widest copy.
pub const SLACK: usize = SKELETON_TOKENS;

/// Templates an attribute may have in the table, and attributes: indices are masked to these
/// powers of two rather than bounds-checked.
const TEMPLATE_SLOTS: usize = 32;
const ATTRIBUTE_SLOTS: usize = 8;
const _: () = assert!(TEMPLATES_PER_ATTRIBUTE <= TEMPLATE_SLOTS && N_ATTRIBUTES <= ATTRIBUTE_SLOTS);
const DATE: usize = Attribute::BirthDate as usize;

/// Where a span's tokens start in the arena, and how many there are.
#[derive(Clone, Copy, Debug, Default)]
struct Span {
    start: u32,
    len: u32,
}

/// A template as written: `before_name`, three slots for the name and `between` as one
/// skeleton (the name is written over its slots), the value, then `after_value`.
#[derive(Clone, Copy, Debug, Default)]
struct TemplateSpans {
    skeleton: Span,
    after_value: u32,
    /// Where the name goes in the skeleton (`before_name`'s length).
    name_at: u32,
    /// Tokens of the sentence but its value.
    fixed: u32,
}

/// The draws of one biography, ready to be written: an individual's name, the values stated
/// (its own, or donors' for a control stream), and the sentences' order and templates.
#[derive(Clone, Copy, Debug)]
pub struct Sentences {
    pub name: [u32; 3],
    pub values: [u32; N_ATTRIBUTES],
    pub draws: SentenceDraws,
}

/// The calendar of birth dates, to cut a date value into day, month and year (as `Pools` does).
#[derive(Clone, Copy, Debug)]
pub struct Calendar {
    pub days: u32,
    pub months: u32,
}

/// Token ids a [`SpanTable`] is built from (the world's tokenized templates and values).
pub struct Sources<'a> {
    pub templates: &'a [Vec<Template>; N_ATTRIBUTES],
    /// Tokens of each value, per attribute; empty for the birth date (composed from the calendar).
    pub values: &'a [Vec<Vec<u32>>; N_ATTRIBUTES],
    pub first_names: &'a [u32],
    pub last_names: &'a [u32],
    pub days: &'a [u32],
    pub months: &'a [u32],
    pub years: &'a [u32],
    pub calendar: Calendar,
}

#[derive(Clone, Debug)]
pub struct SpanTable {
    /// Every skeleton, `after_value` and value, back to back, then `SLACK` zeros: a fixed-width
    /// copy from any span's start stays inside.
    arena: Vec<i32>,
    templates: [[TemplateSpans; TEMPLATE_SLOTS]; ATTRIBUTE_SLOTS],
    values: [Vec<Span>; N_ATTRIBUTES],
    first_names: Vec<i32>,
    last_names: Vec<i32>,
    days: Vec<i32>,
    months: Vec<i32>,
    years: Vec<i32>,
    calendar: Calendar,
}

fn ids(tokens: &[u32]) -> Vec<i32> {
    tokens.iter().map(|&t| t as i32).collect()
}

/// Copies `N` tokens from `src` to `dst`: a few moves, the length being a constant.
///
/// # Safety
/// `src` must be valid for reading, and `dst` for writing, `N` tokens.
#[inline(always)]
unsafe fn copy<const N: usize>(src: *const i32, dst: *mut MaybeUninit<i32>) {
    std::ptr::copy_nonoverlapping(src, dst.cast::<i32>(), N);
}

fn too_long(what: &str, tokens: usize, most: usize) -> KadynError {
    KadynError::bad_data(
        "templates.json and the value pools",
        format!("{what} of {tokens} tokens, more than the {most} the batch builder copies"),
    )
}

impl SpanTable {
    pub fn new(src: &Sources<'_>) -> Result<Self> {
        let mut arena = Vec::new();
        let mut push = |tokens: &[u32]| {
            let start = arena.len() as u32;
            arena.extend(tokens.iter().map(|&t| t as i32));
            Span {
                start,
                len: tokens.len() as u32,
            }
        };
        let mut templates = [[TemplateSpans::default(); TEMPLATE_SLOTS]; ATTRIBUTE_SLOTS];
        let mut values: [Vec<Span>; N_ATTRIBUTES] = Default::default();
        for attr in 0..N_ATTRIBUTES {
            for (slot, t) in templates[attr].iter_mut().zip(&src.templates[attr]) {
                let skeleton: Vec<u32> = t
                    .before_name
                    .iter()
                    .chain(&[0; 3])
                    .chain(&t.between)
                    .copied()
                    .collect();
                if skeleton.len() > SKELETON_TOKENS {
                    return Err(too_long(
                        "a template's text before its value",
                        skeleton.len(),
                        SKELETON_TOKENS,
                    ));
                }
                if t.after_value.len() > AFTER_TOKENS {
                    return Err(too_long(
                        "a template's text after its value",
                        t.after_value.len(),
                        AFTER_TOKENS,
                    ));
                }
                let (skeleton, after_value) = (push(&skeleton), push(&t.after_value));
                *slot = TemplateSpans {
                    skeleton,
                    after_value: after_value.start,
                    name_at: t.before_name.len() as u32,
                    fixed: skeleton.len + after_value.len,
                };
            }
            for value in &src.values[attr] {
                if value.len() > VALUE_TOKENS {
                    return Err(too_long("a value", value.len(), VALUE_TOKENS));
                }
                values[attr].push(push(value));
            }
        }
        arena.resize(arena.len() + SLACK, 0);
        Ok(SpanTable {
            arena,
            templates,
            values,
            first_names: ids(src.first_names),
            last_names: ids(src.last_names),
            days: ids(src.days),
            months: ids(src.months),
            years: ids(src.years),
            calendar: src.calendar,
        })
    }

    /// Bytes the table holds (arena and index), for the docs' memory figures.
    pub fn heap_bytes(&self) -> usize {
        let values: usize = self.values.iter().map(Vec::len).sum::<usize>() * size_of::<Span>();
        let names = self.first_names.len() + self.last_names.len();
        let dates = self.days.len() + self.months.len() + self.years.len();
        (self.arena.len() + names + dates) * size_of::<i32>()
            + values
            + size_of_val(&self.templates)
    }

    #[inline(always)]
    fn template(&self, s: &Sentences, i: usize) -> &TemplateSpans {
        // Both indices are in range by construction; the masks spare the bounds checks.
        &self.templates[s.draws.attribute(i) % ATTRIBUTE_SLOTS]
            [s.draws.template(i) % TEMPLATE_SLOTS]
    }

    /// Tokens of the biography, `<bos>` and `<eos>` included.
    #[inline]
    pub fn biography_len(&self, s: &Sentences) -> usize {
        let mut len = 2;
        for i in 0..N_ATTRIBUTES {
            len += self.template(s, i).fixed as usize;
        }
        for (attr, &value) in s.values.iter().enumerate() {
            len += match attr {
                DATE => 3,
                _ => self.values[attr][value as usize].len as usize,
            };
        }
        len
    }

    /// Writes a biography (without `<bos>` when `bos` is false) at the start of `ids` and `types`;
    /// returns its length. `types` must hold -1 over the biography and the [`SLACK`] slots after
    /// it (only value tokens are written there); both slices need `len + SLACK` slots (a panic
    /// if not).
    #[inline(always)]
    pub fn write(
        &self,
        s: &Sentences,
        bos: bool,
        ids: &mut [MaybeUninit<i32>],
        types: &mut [MaybeUninit<i8>],
    ) -> usize {
        // Each attribute's value as a source of tokens, looked up before the sentences so that
        // writing them takes no branch on the attribute (the sentence order is random).
        let c = self.calendar;
        let date = s.values[DATE];
        let mut date_tokens = [0i32; VALUE_TOKENS];
        date_tokens[..3].copy_from_slice(&[
            self.days[(date % c.days) as usize],
            self.months[((date / c.days) % c.months) as usize],
            self.years[(date / (c.days * c.months)) as usize],
        ]);
        let mut sources = [date_tokens.as_ptr(); ATTRIBUTE_SLOTS];
        let mut lens = [3usize; ATTRIBUTE_SLOTS];
        for attr in 0..N_ATTRIBUTES {
            if attr != DATE {
                let span = self.values[attr][s.values[attr] as usize];
                sources[attr] = self.arena[span.start as usize..].as_ptr();
                lens[attr] = span.len as usize;
            }
        }
        let name = [
            self.first_names[s.name[0] as usize],
            self.first_names[s.name[1] as usize],
            self.last_names[s.name[2] as usize],
        ];
        let mut at = 0;
        if bos {
            ids[0] = MaybeUninit::new(BOS_ID as i32);
            at = 1;
        }
        let arena = self.arena.as_ptr();
        for i in 0..N_ATTRIBUTES {
            let a = s.draws.attribute(i) % ATTRIBUTE_SLOTS;
            let t = self.template(s, i);
            let value_at = at + t.skeleton.len as usize;
            let after_at = value_at + lens[a];
            let end = at + t.fixed as usize + lens[a];
            // Every write of this sentence starts inside it and is at most SLACK tokens long, so
            // lands in `at .. end + SLACK`: one check for them all.
            assert!(end + SLACK <= ids.len().min(types.len()));
            // SAFETY: the writes are in bounds (checked above). So are the reads: each copy
            // reads at most SLACK tokens from a span's start in the arena, which ends with SLACK
            // zeros, or VALUE_TOKENS from `date_tokens`.
            unsafe {
                let out = ids.as_mut_ptr();
                copy::<SKELETON_TOKENS>(arena.add(t.skeleton.start as usize), out.add(at));
                copy::<3>(name.as_ptr(), out.add(at + t.name_at as usize));
                copy::<VALUE_TOKENS>(sources[a], out.add(value_at));
                copy::<AFTER_TOKENS>(arena.add(t.after_value as usize), out.add(after_at));
                // Tag the value (with a lane as wide as its copy), then restore the -1 the tag
                // spilled over.
                let tags = types.as_mut_ptr();
                tags.add(value_at)
                    .cast::<[i8; VALUE_TOKENS]>()
                    .write_unaligned([a as i8; VALUE_TOKENS]);
                tags.add(after_at)
                    .cast::<[i8; VALUE_TOKENS]>()
                    .write_unaligned([-1; VALUE_TOKENS]);
            }
            at = end;
        }
        ids[at] = MaybeUninit::new(EOS_ID as i32);
        at + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{World, WorldConfig};

    fn sources<'a>(
        templates: &'a [Vec<Template>; N_ATTRIBUTES],
        values: &'a [Vec<Vec<u32>>; N_ATTRIBUTES],
    ) -> Sources<'a> {
        Sources {
            templates,
            values,
            first_names: &[10],
            last_names: &[11],
            days: &[12],
            months: &[13],
            years: &[14],
            calendar: Calendar { days: 1, months: 1 },
        }
    }

    fn template(before_name: usize, between: usize, after_value: usize) -> Template {
        Template {
            before_name: vec![20; before_name],
            between: vec![21; between],
            after_value: vec![22; after_value],
        }
    }

    #[test]
    fn fragments_and_values_longer_than_a_copy_are_refused() {
        let fits: [Vec<Template>; N_ATTRIBUTES] =
            std::array::from_fn(|_| vec![template(SKELETON_TOKENS - 4, 1, AFTER_TOKENS)]);
        let values: [Vec<Vec<u32>>; N_ATTRIBUTES] =
            std::array::from_fn(|_| vec![vec![30; VALUE_TOKENS]]);
        assert!(SpanTable::new(&sources(&fits, &values)).is_ok());
        let mut long_value = values.clone();
        long_value[0].push(vec![30; VALUE_TOKENS + 1]);
        let e = SpanTable::new(&sources(&fits, &long_value))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a value of 9 tokens, more than the 8"), "{e}");
        for (bad, what) in [
            (
                template(SKELETON_TOKENS - 3, 1, 1),
                "before its value of 17 tokens",
            ),
            (
                template(0, 1, AFTER_TOKENS + 1),
                "after its value of 9 tokens",
            ),
        ] {
            let mut long = fits.clone();
            long[3].push(bad);
            let e = SpanTable::new(&sources(&long, &values))
                .unwrap_err()
                .to_string();
            assert!(e.contains(what), "{e}");
        }
    }

    #[test]
    fn the_table_is_small_whatever_the_population() {
        let bytes = |n| {
            World::new(WorldConfig {
                n_individuals: n,
                ..Default::default()
            })
            .unwrap()
            .spans()
            .heap_bytes()
        };
        let small = bytes(10);
        assert_eq!(small, bytes(20_000));
        assert!(small < 256 << 10, "{small} bytes");
    }
}
