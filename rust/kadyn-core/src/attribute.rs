//! The six attribute types of a biography, in the order that defines their `attr_type` id.

use crate::error::{KadynError, Result};

pub const N_ATTRIBUTES: usize = 6;

pub const ATTRIBUTE_NAMES: [&str; N_ATTRIBUTES] = [
    "birth_place",
    "birth_date",
    "university",
    "major",
    "company",
    "current_location",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Attribute {
    BirthPlace = 0,
    BirthDate = 1,
    University = 2,
    Major = 3,
    Company = 4,
    CurrentLocation = 5,
}

impl Attribute {
    pub const ALL: [Attribute; N_ATTRIBUTES] = [
        Attribute::BirthPlace,
        Attribute::BirthDate,
        Attribute::University,
        Attribute::Major,
        Attribute::Company,
        Attribute::CurrentLocation,
    ];

    pub fn name(self) -> &'static str {
        ATTRIBUTE_NAMES[self as usize]
    }

    pub fn parse(name: &str) -> Result<Self> {
        ATTRIBUTE_NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| Attribute::ALL[i])
            .ok_or_else(|| KadynError::unknown("attribute", name, &ATTRIBUTE_NAMES))
    }
}
