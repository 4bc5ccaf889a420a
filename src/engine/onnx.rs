//! The few parts of an ONNX model file (`onnx.proto`, field numbers as the ONNX project fixes
//! them) that the native evaluators read: the graph's inputs, outputs, initializers and nodes
//! with their attributes. Everything else in the file is skipped unread.

use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    /// Model-local functions: a node may name one, so a model with any is left to the runtime.
    #[prost(bytes = "vec", repeated, tag = "25")]
    pub functions: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// Only counted: a graph with constants is not one the native evaluators take.
    #[prost(bytes = "vec", repeated, tag = "5")]
    pub initializer: Vec<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "15")]
    pub sparse_initializer: Vec<Vec<u8>>,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(string, tag = "7")]
    pub domain: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    /// Set when the attribute refers to a function's attribute: its value is not here.
    #[prost(string, tag = "21")]
    pub ref_attr_name: String,
    #[prost(float, tag = "2")]
    pub f: f32,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(bytes = "vec", tag = "4")]
    pub s: Vec<u8>,
    /// A tensor value (the `*_as_tensor` attributes): present means a form not read here.
    #[prost(bytes = "vec", optional, tag = "5")]
    pub t: Option<Vec<u8>>,
    #[prost(float, repeated, tag = "7")]
    pub floats: Vec<f32>,
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    #[prost(bytes = "vec", repeated, tag = "9")]
    pub strings: Vec<Vec<u8>>,
}

impl NodeProto {
    pub fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.attribute.iter().find(|a| a.name == name)
    }

    pub fn floats(&self, name: &str) -> &[f32] {
        self.attr(name).map_or(&[], |a| &a.floats)
    }

    pub fn ints(&self, name: &str) -> &[i64] {
        self.attr(name).map_or(&[], |a| &a.ints)
    }

    pub fn int(&self, name: &str) -> Option<i64> {
        self.attr(name).map(|a| a.i)
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        self.attr(name).and_then(|a| std::str::from_utf8(&a.s).ok())
    }

    pub fn texts(&self, name: &str) -> Vec<&str> {
        self.attr(name).map_or(Vec::new(), |a| a.strings.iter().filter_map(|s| std::str::from_utf8(s).ok()).collect())
    }
}
