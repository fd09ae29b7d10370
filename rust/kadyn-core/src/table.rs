//! The world as a table: one row per individual of a population (index, full name, the six values
//! as text). Shared by `World.table()` in Python and `world.parquet` of `kadyn-gen`, so a dataset's
//! answer key and the in-memory world can never disagree.

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema};

use crate::attribute::Attribute;
use crate::world::{Population, World};

/// Columns `individual` (uint32, the index within the population, as in the stream's
/// `individual` column), `name`, then one utf8 column per attribute, in `Attribute::ALL` order.
pub fn world_table(world: &World, population: Population) -> RecordBatch {
    let inds = &world.individuals()[world.population_range(population)];
    let mut fields = vec![
        Field::new("individual", DataType::UInt32, false),
        Field::new("name", DataType::Utf8, false),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(0..inds.len() as u32)),
        Arc::new(StringArray::from_iter_values(
            inds.iter().map(|i| world.full_name(i)),
        )),
    ];
    for attr in Attribute::ALL {
        fields.push(Field::new(attr.name(), DataType::Utf8, false));
        columns.push(Arc::new(StringArray::from_iter_values(
            inds.iter()
                .map(|i| world.value_text(attr, i.values[attr as usize])),
        )));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("columns match fields")
}
