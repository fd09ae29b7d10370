//! Value pools shipped with the crate (see `data/SOURCES.md`): names, cities, universities,
//! majors, companies, and the calendar for birth dates. Each pool is a prefix of its data file,
//! so a smaller world uses the most frequent names and the largest cities.

use serde::{Deserialize, Serialize};

use crate::error::{KadynError, Result};

const FIRST_NAMES: &str = include_str!("../data/first_names.txt");
const LAST_NAMES: &str = include_str!("../data/last_names.txt");
const CITIES: &str = include_str!("../data/cities.txt");
const UNIVERSITIES: &str = include_str!("../data/universities.txt");
const MAJORS: &str = include_str!("../data/majors.txt");
const COMPANIES: &str = include_str!("../data/companies.txt");

pub const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
/// Days are drawn independently of the month, as in the paper's baseline ln(201 · 12 · 31).
pub const DAYS: u32 = 31;

fn default_days() -> u32 {
    DAYS
}

fn default_months() -> u32 {
    MONTHS.len() as u32
}

/// How many entries of each pool a world uses. Defaults are the paper's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSizes {
    pub first_names: u32,
    pub last_names: u32,
    pub cities: u32,
    pub universities: u32,
    pub majors: u32,
    pub companies: u32,
    pub year_min: u32,
    pub year_max: u32,
    /// Days 1..=days and the first `months` months: small CPU-scale worlds shrink the calendar so
    /// that every date is common and the population's joint date entropy meets the factorized
    /// statistics-only level (see `baseline.rs`). Defaults are the paper's (31, 12).
    #[serde(default = "default_days")]
    pub days: u32,
    #[serde(default = "default_months")]
    pub months: u32,
}

impl Default for PoolSizes {
    fn default() -> Self {
        PoolSizes {
            first_names: 900,
            last_names: 1000,
            cities: 800,
            universities: 200,
            majors: 100,
            companies: 500,
            year_min: 1900,
            year_max: 2100,
            days: DAYS,
            months: MONTHS.len() as u32,
        }
    }
}

fn lines(text: &'static str) -> Vec<&'static str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect()
}

/// The pools a world draws from, already cut to their configured sizes.
#[derive(Clone, Debug)]
pub struct Pools {
    pub first_names: Vec<&'static str>,
    pub last_names: Vec<&'static str>,
    pub cities: Vec<&'static str>,
    pub universities: Vec<&'static str>,
    pub majors: Vec<&'static str>,
    pub companies: Vec<&'static str>,
    pub year_min: u32,
    pub year_max: u32,
    pub days: u32,
    pub months: u32,
}

fn take(field: &'static str, text: &'static str, wanted: u32) -> Result<Vec<&'static str>> {
    let all = lines(text);
    if wanted == 0 || wanted as usize > all.len() {
        return Err(KadynError::invalid(
            field,
            wanted,
            format!("in 1..={} (entries shipped)", all.len()),
        ));
    }
    Ok(all[..wanted as usize].to_vec())
}

impl Pools {
    pub fn new(sizes: &PoolSizes) -> Result<Self> {
        if sizes.year_min < 1 || sizes.year_max > 9999 {
            return Err(KadynError::invalid(
                "year_min/year_max",
                format!("{}..={}", sizes.year_min, sizes.year_max),
                "within 1..=9999",
            ));
        }
        if sizes.year_max < sizes.year_min {
            return Err(KadynError::invalid(
                "year_max",
                sizes.year_max,
                format!(">= year_min ({})", sizes.year_min),
            ));
        }
        if !(1..=DAYS).contains(&sizes.days) {
            return Err(KadynError::invalid(
                "n_days",
                sizes.days,
                format!("in 1..={DAYS}"),
            ));
        }
        if !(1..=MONTHS.len() as u32).contains(&sizes.months) {
            return Err(KadynError::invalid(
                "n_months",
                sizes.months,
                format!("in 1..={}", MONTHS.len()),
            ));
        }
        Ok(Pools {
            first_names: take("n_first_names", FIRST_NAMES, sizes.first_names)?,
            last_names: take("n_last_names", LAST_NAMES, sizes.last_names)?,
            cities: take("n_cities", CITIES, sizes.cities)?,
            universities: take("n_universities", UNIVERSITIES, sizes.universities)?,
            majors: take("n_majors", MAJORS, sizes.majors)?,
            companies: take("n_companies", COMPANIES, sizes.companies)?,
            year_min: sizes.year_min,
            year_max: sizes.year_max,
            days: sizes.days,
            months: sizes.months,
        })
    }

    pub fn n_years(&self) -> u32 {
        self.year_max - self.year_min + 1
    }

    /// Number of possible birth dates (day × month × year).
    pub fn n_dates(&self) -> u32 {
        self.n_years() * self.months * self.days
    }

    /// A birth date index as (day, month, year) offsets; day varies fastest.
    pub fn split_date(&self, value: u32) -> (u32, u32, u32) {
        (
            value % self.days,
            (value / self.days) % self.months,
            value / (self.days * self.months),
        )
    }

    /// Number of distinct full names (first × middle × last).
    pub fn name_capacity(&self) -> u64 {
        let f = self.first_names.len() as u64;
        f * f * self.last_names.len() as u64
    }

    /// Entries shipped in each pool file, for error messages and docs.
    pub fn shipped() -> [(&'static str, usize); 6] {
        [
            ("first_names", lines(FIRST_NAMES).len()),
            ("last_names", lines(LAST_NAMES).len()),
            ("cities", lines(CITIES).len()),
            ("universities", lines(UNIVERSITIES).len()),
            ("majors", lines(MAJORS).len()),
            ("companies", lines(COMPANIES).len()),
        ]
    }
}
