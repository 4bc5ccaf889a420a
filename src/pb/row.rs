//! `modeld.v1.Row`, decoded by hand.
//!
//! prost would decode a row's `features` map into a `HashMap<String, Value>`: a SipHash per
//! name, a table that grows by rehashing, and every field read through the layered buffer of
//! the enclosing message. For a one-row Predict that cost as much as the model run. Here the map's entries are read from the contiguous request buffer into a vector
//! in wire order, each name at most once, with the protobuf rule for repeated keys (the last
//! value wins). The wire format is the proto's, byte for byte; only the Rust type differs.

use std::{collections::HashMap, fmt, ops::Index};

use bytes::{Buf, BufMut};
use prost::{
    DecodeError, Message,
    encoding::{self, DecodeContext, WireType},
};

use super::generated::{Value, value::Kind};

/// One row of a request or stream chunk.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct Row {
    /// Optional caller id, echoed in the prediction and named in errors.
    pub row_id: String,
    /// Feature name -> value. An absent name is a missing value.
    pub features: Features,
    /// BatchPredict only: values by position, named by the stream's `columns`.
    pub values: Vec<Value>,
}

impl Message for Row {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.row_id.is_empty() {
            encoding::string::encode(1, &self.row_id, buf);
        }
        for (name, value) in &self.features.entries {
            encoding::encode_key(2, WireType::LengthDelimited, buf);
            encoding::encode_varint(entry_len(name, value) as u64, buf);
            if !name.is_empty() {
                encoding::string::encode(1, name, buf);
            }
            if value.kind.is_some() {
                encoding::message::encode(2, value, buf);
            }
        }
        encoding::message::encode_repeated(3, &self.values, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let at = |field: &'static str| {
            move |mut e: DecodeError| {
                e.push("Row", field);
                e
            }
        };
        match tag {
            1 => encoding::string::merge(wire_type, &mut self.row_id, buf, ctx).map_err(at("row_id")),
            2 => self.merge_feature(wire_type, buf, ctx).map_err(at("features")),
            3 => encoding::message::merge_repeated(wire_type, &mut self.values, buf, ctx).map_err(at("values")),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let id = if self.row_id.is_empty() { 0 } else { encoding::string::encoded_len(1, &self.row_id) };
        let features: usize = self
            .features
            .entries
            .iter()
            .map(|(name, value)| {
                let len = entry_len(name, value);
                encoding::key_len(2) + encoding::encoded_len_varint(len as u64) + len
            })
            .sum();
        id + features + encoding::message::encoded_len_repeated(3, &self.values)
    }

    fn clear(&mut self) {
        self.row_id.clear();
        self.features.clear();
        self.values.clear();
    }
}

impl Row {
    /// One map entry: read straight from the buffer's current chunk when the entry lies in it
    /// (a gRPC message always does), else through prost's loop over the buffer.
    fn merge_feature(
        &mut self,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
        let mut entry = (String::new(), Value::default());
        let chunk = buf.chunk();
        let mut rest = chunk;
        let body = encoding::decode_varint(&mut rest).ok().and_then(|len| rest.get(..usize::try_from(len).ok()?));
        match body {
            Some(mut body) => {
                let used = chunk.len() - rest.len() + body.len();
                match plain_entry(body) {
                    Some(plain) => entry = plain,
                    None => {
                        while !body.is_empty() {
                            entry_field(&mut entry, &mut body, ctx.clone())?;
                        }
                    }
                }
                buf.advance(used);
            }
            // Across chunks, or broken: prost's loop reads it and names what is wrong.
            None => encoding::merge_loop(&mut entry, buf, ctx, entry_field)?,
        }
        self.features.insert(entry.0, entry.1);
        Ok(())
    }
}

/// A map entry as clients write it, read in one pass: the name (field 1) and a value (field 2)
/// of the four kinds, each as its wire type says. None for anything else (unknown fields,
/// other wire types, broken bytes, text that is not UTF-8): then prost's general reading of
/// the same bytes decides, with its errors. The same rules as prost's: the last name and the
/// last value kind win, an absent name is empty and an absent value unset.
fn plain_entry(mut body: &[u8]) -> Option<(String, Value)> {
    let (mut name, mut value) = ("", Value::default());
    while !body.is_empty() {
        match varint(&mut body)? {
            0x0a => name = text(&mut body)?,
            0x12 => {
                let len = usize::try_from(varint(&mut body)?).ok()?;
                let (mut message, rest) = body.split_at_checked(len)?;
                body = rest;
                while !message.is_empty() {
                    value.kind = Some(match varint(&mut message)? {
                        0x09 => {
                            let (bytes, rest) = message.split_first_chunk::<8>()?;
                            message = rest;
                            Kind::Number(f64::from_le_bytes(*bytes))
                        }
                        0x10 => Kind::Integer(varint(&mut message)? as i64),
                        0x1a => Kind::Text(text(&mut message)?.to_owned()),
                        0x20 => Kind::Flag(varint(&mut message)? != 0),
                        _ => return None,
                    });
                }
            }
            _ => return None,
        }
    }
    Some((name.to_owned(), value))
}

/// Keys, lengths and small numbers are one byte: read those here, the rest through prost.
#[inline]
fn varint(buf: &mut &[u8]) -> Option<u64> {
    match buf.split_first() {
        Some((&byte, rest)) if byte < 0x80 => {
            *buf = rest;
            Some(u64::from(byte))
        }
        _ => encoding::decode_varint(buf).ok(),
    }
}

/// A length-delimited UTF-8 string, borrowed from the buffer.
fn text<'a>(buf: &mut &'a [u8]) -> Option<&'a str> {
    let len = usize::try_from(varint(buf)?).ok()?;
    let (bytes, rest) = buf.split_at_checked(len)?;
    *buf = rest;
    std::str::from_utf8(bytes).ok()
}

/// One field of a map entry: the name (1) or the value (2); either may be absent (empty name,
/// unset value), and unknown fields are skipped, as in any message.
fn entry_field<B: Buf>(entry: &mut (String, Value), buf: &mut B, ctx: DecodeContext) -> Result<(), DecodeError> {
    let (tag, wire_type) = encoding::decode_key(buf)?;
    match tag {
        1 => encoding::string::merge(wire_type, &mut entry.0, buf, ctx),
        2 => encoding::message::merge(wire_type, &mut entry.1, buf, ctx),
        _ => encoding::skip_field(wire_type, tag, buf, ctx),
    }
}

/// Encoded length of one map entry's body: defaults are left out, as prost leaves them out.
fn entry_len(name: &str, value: &Value) -> usize {
    let name = if name.is_empty() {
        0
    } else {
        encoding::key_len(1) + encoding::encoded_len_varint(name.len() as u64) + name.len()
    };
    let value = if value.kind.is_none() { 0 } else { encoding::message::encoded_len(2, value) };
    name + value
}

/// Rows up to this wide find names by a linear search, which for a few dozen short names is
/// cheaper than hashing them; wider rows keep an index.
const LINEAR: usize = 32;

/// A row's features: a map from name to value that keeps the order names arrived in.
#[derive(Clone, Default)]
pub struct Features {
    entries: Vec<(String, Value)>,
    /// Entry positions by name, once the row is wider than [`LINEAR`].
    index: Option<HashMap<String, usize>>,
    /// One bit per name held, chosen by [`bit`]: a name whose bit is clear is new without a
    /// search, which is most names of a decoded row.
    seen: u64,
}

/// Iterator over a row's features, in order.
pub type Iter<'a> =
    std::iter::Map<std::slice::Iter<'a, (String, Value)>, fn(&'a (String, Value)) -> (&'a String, &'a Value)>;

impl Features {
    pub fn new() -> Features {
        Features::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> Iter<'_> {
        self.entries.iter().map(|(name, value)| (name, value))
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.position(name).map(|i| &self.entries[i].1)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.position(name).is_some()
    }

    /// Sets `name` to `value`; returns the value it replaces.
    pub fn insert(&mut self, name: String, value: Value) -> Option<Value> {
        let bit = bit(&name);
        if self.seen & bit != 0 {
            if let Some(i) = self.position(&name) {
                return Some(std::mem::replace(&mut self.entries[i].1, value));
            }
        }
        self.seen |= bit;
        if self.entries.capacity() == 0 {
            // Most rows carry a dozen or more features: one allocation instead of four.
            self.entries.reserve(16);
        }
        match &mut self.index {
            Some(index) => {
                index.insert(name.clone(), self.entries.len());
            }
            None if self.entries.len() == LINEAR => {
                let index = self.entries.iter().enumerate().map(|(i, (n, _))| (n.clone(), i));
                let mut index: HashMap<String, usize> = index.collect();
                index.insert(name.clone(), self.entries.len());
                self.index = Some(index);
            }
            None => {}
        }
        self.entries.push((name, value));
        None
    }

    /// Takes `name` out; the others keep their order.
    pub fn remove(&mut self, name: &str) -> Option<Value> {
        let i = self.position(name)?;
        let (_, value) = self.entries.remove(i);
        if let Some(index) = &mut self.index {
            index.remove(name);
            index.values_mut().filter(|p| **p > i).for_each(|p| *p -= 1);
        }
        Some(value)
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.index = None;
        self.seen = 0;
    }

    fn position(&self, name: &str) -> Option<usize> {
        if self.seen & bit(name) == 0 {
            return None;
        }
        match &self.index {
            Some(index) => index.get(name).copied(),
            None => self.entries.iter().position(|(n, _)| n == name),
        }
    }
}

/// A name's bit in [`Features::seen`]: from its length and its last bytes, which tell apart
/// the names of one schema far more often than their first bytes do.
fn bit(name: &str) -> u64 {
    let b = name.as_bytes();
    let tail = match b.len() {
        0 => 0,
        1 => u64::from(b[0]),
        n => u64::from(b[n - 1]) * 31 + u64::from(b[n - 2]),
    };
    1 << ((tail * 7 + b.len() as u64) % 64)
}

/// Maps are equal when they hold the same names with the same values, in any order.
impl PartialEq for Features {
    fn eq(&self, other: &Features) -> bool {
        self.len() == other.len() && self.iter().all(|(name, value)| other.get(name) == Some(value))
    }
}

impl fmt::Debug for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<Q: AsRef<str> + ?Sized> Index<&Q> for Features {
    type Output = Value;

    fn index(&self, name: &Q) -> &Value {
        let name = name.as_ref();
        self.get(name).unwrap_or_else(|| panic!("no feature named `{name}`"))
    }
}

impl FromIterator<(String, Value)> for Features {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Features {
        let mut features = Features::new();
        features.extend(iter);
        features
    }
}

impl Extend<(String, Value)> for Features {
    fn extend<I: IntoIterator<Item = (String, Value)>>(&mut self, iter: I) {
        for (name, value) in iter {
            self.insert(name, value);
        }
    }
}

impl<'a> IntoIterator for &'a Features {
    type Item = (&'a String, &'a Value);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl IntoIterator for Features {
    type Item = (String, Value);
    type IntoIter = std::vec::IntoIter<(String, Value)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// prost's own decoding of `modeld.v1.Row`: the reference this type must agree with.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Reference {
        #[prost(string, tag = "1")]
        row_id: String,
        #[prost(map = "string, message", tag = "2")]
        features: HashMap<String, Value>,
        #[prost(message, repeated, tag = "3")]
        values: Vec<Value>,
    }

    fn value(kind: Option<Kind>) -> Value {
        Value { kind }
    }

    fn kind() -> impl Strategy<Value = Option<Kind>> {
        prop_oneof![
            Just(None),
            any::<f64>().prop_map(|x| Some(Kind::Number(x))),
            any::<i64>().prop_map(|i| Some(Kind::Integer(i))),
            "\\PC{0,6}".prop_map(|s| Some(Kind::Text(s))),
            any::<bool>().prop_map(|b| Some(Kind::Flag(b))),
        ]
    }

    fn same(row: &Row, reference: &Reference) -> bool {
        // NaN is not equal to itself: compare encodings of each value instead.
        let bytes = |v: &Value| v.encode_to_vec();
        row.row_id == reference.row_id
            && row.features.len() == reference.features.len()
            && row.features.iter().all(|(k, v)| reference.features.get(k).map(bytes) == Some(bytes(v)))
            && row.values.iter().map(bytes).eq(reference.values.iter().map(bytes))
    }

    #[test]
    fn a_repeated_name_keeps_its_last_value_and_its_first_place() {
        let entry = |name: &str, i: i64| Reference {
            features: HashMap::from([(name.to_owned(), value(Some(Kind::Integer(i))))]),
            ..Reference::default()
        };
        let mut bytes = entry("a", 1).encode_to_vec();
        bytes.extend(entry("b", 2).encode_to_vec());
        bytes.extend(entry("a", 3).encode_to_vec());
        let row = Row::decode(&*bytes).unwrap();
        let names: Vec<_> = row.features.iter().map(|(k, v)| (k.as_str(), v.kind.clone())).collect();
        assert_eq!(names, [("a", Some(Kind::Integer(3))), ("b", Some(Kind::Integer(2)))]);
    }

    #[test]
    fn wide_rows_are_indexed_and_stay_a_map() {
        let mut features = Features::new();
        for i in 0..200 {
            assert_eq!(features.insert(format!("f{i}"), value(Some(Kind::Integer(i)))), None);
        }
        assert_eq!(features.insert("f7".into(), value(None)), Some(value(Some(Kind::Integer(7)))));
        assert_eq!(features.remove("f3"), Some(value(Some(Kind::Integer(3)))));
        assert_eq!(features.len(), 199);
        assert_eq!(features["f199"], value(Some(Kind::Integer(199))));
        assert_eq!(features.get("f7"), Some(&value(None)));
        assert!(!features.contains_key("f3"));
        let order: Vec<_> = features.iter().take(4).map(|(k, _)| k.clone()).collect();
        assert_eq!(order, ["f0", "f1", "f2", "f4"]);
        let mut narrow = Features::new();
        narrow.insert("x".into(), value(None));
        assert_eq!(narrow.remove("x"), Some(value(None)));
        assert_eq!(narrow.remove("x"), None);
    }

    #[test]
    fn unusual_entries_are_read_as_prost_reads_them() {
        let entries: [&[u8]; 4] = [
            // Unknown fields in the entry (3) and in the value (5) are skipped.
            &[0x0a, 0x01, b'a', 0x18, 0x01, 0x12, 0x04, 0x28, 0x01, 0x10, 0x07],
            // Two names, two values of different kinds: the last of each.
            &[0x0a, 0x01, b'a', 0x12, 0x02, 0x20, 0x01, 0x0a, 0x01, b'b', 0x12, 0x03, 0x1a, 0x01, b'x'],
            // No name, no value.
            &[],
            // A key written in two bytes where one would do.
            &[0x8a, 0x00, 0x01, b'c', 0x12, 0x02, 0x10, 0x05],
        ];
        for entry in entries {
            let mut bytes = vec![0x12, entry.len() as u8];
            bytes.extend_from_slice(entry);
            let (row, reference) = (Row::decode(&*bytes).unwrap(), Reference::decode(&*bytes).unwrap());
            assert!(same(&row, &reference), "{entry:?}: {row:?} vs {reference:?}");
        }
        let row = Row::decode(&[0x12, 0x0b, 0x0a, 0x01, b'a', 0x18, 0x01, 0x12, 0x04, 0x28, 0x01, 0x10, 0x07][..]);
        assert_eq!(row.unwrap().features["a"], value(Some(Kind::Integer(7))));
    }

    #[test]
    fn broken_entries_are_decode_errors() {
        // An entry claiming more bytes than the row has, a name and a text value that are not
        // UTF-8, a value with a wrong wire type for its kind.
        let broken: [&[u8]; 4] = [
            &[0x12, 0x05, 0x0a, 0x01, b'a'],
            &[0x12, 0x03, 0x0a, 0x01, 0xff],
            &[0x12, 0x05, 0x12, 0x03, 0x1a, 0x01, 0xff],
            &[0x12, 0x04, 0x12, 0x02, 0x0b, 0x01],
        ];
        for bytes in broken {
            let e = Row::decode(bytes).unwrap_err().to_string();
            assert!(e.contains("Row.features"), "{e}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 512,
            rng_seed: proptest::test_runner::RngSeed::Fixed(11),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Whatever prost writes, this type reads the same map; what this type writes, prost
        /// reads back the same; random bytes are decoded alike or refused alike.
        #[test]
        fn agrees_with_prost(
            id in "\\PC{0,4}",
            entries in proptest::collection::vec(("[a-f]{0,2}", kind()), 0..80),
            values in proptest::collection::vec(kind(), 0..3),
            junk in proptest::collection::vec(any::<u8>(), 0..48),
            split in any::<proptest::sample::Index>(),
        ) {
            let reference = Reference {
                row_id: id,
                features: entries.into_iter().map(|(k, v)| (k, value(v))).collect(),
                values: values.into_iter().map(value).collect(),
            };
            let bytes = reference.encode_to_vec();
            let row = Row::decode(&*bytes).unwrap();
            prop_assert!(same(&row, &reference));
            // The same bytes in two chunks, split anywhere.
            let (head, tail) = bytes.split_at(split.index(bytes.len() + 1));
            prop_assert_eq!(&Row::decode(head.chain(tail)).unwrap(), &row);
            prop_assert_eq!(row.encoded_len(), bytes.len());
            let back = Reference::decode(&*row.encode_to_vec()).unwrap();
            prop_assert!(same(&row, &back));
            let (head, tail) = junk.split_at(split.index(junk.len() + 1));
            match (Row::decode(&*junk), Reference::decode(&*junk)) {
                (Ok(row), Ok(reference)) => {
                    prop_assert!(same(&row, &reference));
                    prop_assert!(Row::decode(head.chain(tail)).is_ok_and(|split| same(&split, &reference)));
                }
                (Err(_), Err(_)) => prop_assert!(Row::decode(head.chain(tail)).is_err()),
                (row, reference) => prop_assert!(false, "{row:?} vs {reference:?}"),
            }
        }
    }
}
