//! Rows read leniently, one column at a time. Users write the table with plain SQL, so a
//! column may hold a value its type should not (SQLite takes anything); a row shown to a person
//! must still show, with what cannot be read as NULL (a count as 0). Only what identifies and
//! places a row (its id, status and times) must be readable.
//!
//! [`table_row!`] declares a row struct once and derives from its fields the column list that
//! SELECTs it and the decoding: a column added to the table is one field here.

use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Decode, Row, Type};

/// How a field is read from its column: strictly for what a row cannot do without, leniently
/// for the rest.
pub trait Column<'r, R: Row>: Sized {
    fn read(row: &'r R, name: &'r str) -> Result<Self, sqlx::Error>;
}

/// A value that cannot be read is NULL.
impl<'r, R, T> Column<'r, R> for Option<T>
where
    R: Row,
    &'r str: ColumnIndex<R>,
    T: Lenient + Decode<'r, R::Database> + Type<R::Database>,
{
    fn read(row: &'r R, name: &'r str) -> Result<Self, sqlx::Error> {
        Ok(row.try_get::<Option<T>, _>(name).ok().flatten())
    }
}

/// Types read leniently inside an `Option`: a user's text or number in the wrong type reads as
/// NULL. Times are not among them: a row without readable times cannot be placed.
pub trait Lenient {}
impl Lenient for String {}
impl Lenient for i64 {}

/// Must be readable.
macro_rules! strict {
    ($($t:ty),*) => {$(
        impl<'r, R> Column<'r, R> for $t
        where
            R: Row,
            &'r str: ColumnIndex<R>,
            $t: Decode<'r, R::Database> + Type<R::Database>,
        {
            fn read(row: &'r R, name: &'r str) -> Result<Self, sqlx::Error> {
                row.try_get(name)
            }
        }
    )*};
}
strict!(i64, DateTime<Utc>);

/// A time that may be NULL, but not unreadable.
impl<'r, R> Column<'r, R> for Option<DateTime<Utc>>
where
    R: Row,
    &'r str: ColumnIndex<R>,
    DateTime<Utc>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn read(row: &'r R, name: &'r str) -> Result<Self, sqlx::Error> {
        row.try_get(name)
    }
}

/// A count (or a priority) that cannot be read is 0.
macro_rules! zero_if_unreadable {
    ($($t:ty),*) => {$(
        impl<'r, R> Column<'r, R> for $t
        where
            R: Row,
            &'r str: ColumnIndex<R>,
            $t: Decode<'r, R::Database> + Type<R::Database>,
        {
            fn read(row: &'r R, name: &'r str) -> Result<Self, sqlx::Error> {
                Ok(row.try_get(name).unwrap_or_default())
            }
        }
    )*};
}
zero_if_unreadable!(i16, i32);

/// Text that cannot be read is empty.
impl<'r, R> Column<'r, R> for String
where
    R: Row,
    &'r str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    fn read(row: &'r R, name: &'r str) -> Result<Self, sqlx::Error> {
        Ok(row
            .try_get::<Option<String>, _>(name)
            .ok()
            .flatten()
            .unwrap_or_default())
    }
}

/// A struct whose fields are columns of the same names: the struct, `COLUMNS` (the list a
/// SELECT names) and a [`sqlx::FromRow`] reading each field as its type's [`Column`] says.
macro_rules! table_row {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $($(#[$field_meta:meta])* pub $field:ident: $type:ty,)*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $($(#[$field_meta])* pub $field: $type,)*
        }

        impl $name {
            /// The columns, in the struct's order, as a SELECT lists them.
            pub const COLUMNS: &'static [&'static str] = &[$(stringify!($field)),*];
        }

        impl<'r, R> sqlx::FromRow<'r, R> for $name
        where
            R: sqlx::Row,
            $($type: $crate::row::Column<'r, R>,)*
        {
            fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
                Ok($name {
                    $($field: $crate::row::Column::read(row, stringify!($field))?,)*
                })
            }
        }
    };
}
pub(crate) use table_row;
