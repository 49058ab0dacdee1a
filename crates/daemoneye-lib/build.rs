//! Compiles `proto/*.proto` into Rust with `protox` (a pure-Rust protobuf
//! compiler) feeding `prost-build`, so building needs no system `protoc`.

use std::error::Error;

use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};

const PROTO_DIR: &str = "proto";
const PROTO_FILES: &[&str] = &["daemoneye.proto"];

/// Elements per repeated or map field in generated test values. The default
/// (up to 100) makes nested messages, and the round-trip tests, very slow.
const TEST_COLLECTION_SIZES: &str = "0..3";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO_DIR}");
    for file in PROTO_FILES {
        println!("cargo:rerun-if-changed={PROTO_DIR}/{file}");
    }

    let descriptors = protox::compile(PROTO_FILES, [PROTO_DIR])?;

    let mut config = prost_build::Config::new();
    // Ordered maps: deterministic encoding, and the same type the runtime's
    // events use for metadata.
    config.btree_map(["."]);
    // Unit tests generate arbitrary messages for the round-trip properties.
    config.type_attribute(".", "#[cfg_attr(test, derive(proptest_derive::Arbitrary))]");
    for (path, strategy) in small_collection_strategies(&descriptors)? {
        config.field_attribute(
            path,
            format!("#[cfg_attr(test, proptest(strategy = \"{strategy}\"))]"),
        );
    }
    config.compile_fds(descriptors)?;
    Ok(())
}

/// A proptest strategy with few elements for every repeated and map field
/// (and a boxed one for every message field),
/// keyed by the field's fully qualified protobuf path.
fn small_collection_strategies(
    descriptors: &FileDescriptorSet,
) -> Result<Vec<(String, String)>, Box<dyn Error>> {
    let mut out = Vec::new();
    for file in &descriptors.file {
        for message in &file.message_type {
            for field in &message.field {
                let path = format!(".{}.{}.{}", file.package(), message.name(), field.name());
                if field.label() != Label::Repeated {
                    // A message field: its strategy boxed, so that the
                    // strategy of a message holding many messages does not
                    // grow past a test thread's stack.
                    if field.r#type() == Type::Message && field.oneof_index.is_none() {
                        out.push((
                            path,
                            format!(
                                "proptest::option::of(proptest::strategy::Strategy::boxed(\
                                 proptest::arbitrary::any::<{}>()))",
                                rust_type(file.package(), field)?
                            ),
                        ));
                    }
                    continue;
                }
                let strategy = match map_entry(message, field) {
                    Some((key, value)) => format!(
                        "proptest::collection::btree_map(proptest::arbitrary::any::<{}>(), \
                         proptest::arbitrary::any::<{}>(), {TEST_COLLECTION_SIZES})",
                        rust_type(file.package(), key)?,
                        rust_type(file.package(), value)?
                    ),
                    // A message made of itself (a component's components):
                    // one level of default children, or generation recurses
                    // without end.
                    None if field.type_name()
                        == format!(".{}.{}", file.package(), message.name()) =>
                    {
                        format!(
                            "proptest::collection::vec(proptest::strategy::Just({}::default()), \
                             {TEST_COLLECTION_SIZES})",
                            message.name()
                        )
                    }
                    None => format!(
                        "proptest::collection::vec(proptest::arbitrary::any::<{}>(), \
                         {TEST_COLLECTION_SIZES})",
                        rust_type(file.package(), field)?
                    ),
                };
                out.push((path, strategy));
            }
        }
    }
    Ok(out)
}

/// The key and value fields when `field` is a map.
fn map_entry<'a>(
    message: &'a DescriptorProto,
    field: &FieldDescriptorProto,
) -> Option<(&'a FieldDescriptorProto, &'a FieldDescriptorProto)> {
    let entry_name = field.type_name().rsplit('.').next()?;
    let entry = message.nested_type.iter().find(|nested| {
        nested.name() == entry_name
            && nested
                .options
                .as_ref()
                .is_some_and(prost_types::MessageOptions::map_entry)
    })?;
    let key = entry.field.iter().find(|f| f.number() == 1)?;
    let value = entry.field.iter().find(|f| f.number() == 2)?;
    Some((key, value))
}

/// The Rust type prost generates for one element of `field`.
fn rust_type(package: &str, field: &FieldDescriptorProto) -> Result<String, Box<dyn Error>> {
    Ok(match field.r#type() {
        Type::String => "::prost::alloc::string::String".to_owned(),
        Type::Bytes => "::prost::alloc::vec::Vec<u8>".to_owned(),
        Type::Bool => "bool".to_owned(),
        Type::Double => "f64".to_owned(),
        Type::Float => "f32".to_owned(),
        Type::Int32 | Type::Sint32 | Type::Sfixed32 | Type::Enum => "i32".to_owned(),
        Type::Int64 | Type::Sint64 | Type::Sfixed64 => "i64".to_owned(),
        Type::Uint32 | Type::Fixed32 => "u32".to_owned(),
        Type::Uint64 | Type::Fixed64 => "u64".to_owned(),
        Type::Message => {
            // ".daemoneye.v1.ProcessRecord": only top-level messages of our
            // package are repeated in the protocol, and they are in scope by
            // name.
            let prefix = format!(".{package}.");
            match field.type_name().strip_prefix(&prefix) {
                Some(name) if !name.contains('.') => name.to_owned(),
                _ => {
                    return Err(format!(
                        "repeated field {} of type {} needs a strategy in build.rs",
                        field.name(),
                        field.type_name()
                    )
                    .into())
                }
            }
        }
        Type::Group => return Err(format!("field {} is a group", field.name()).into()),
    })
}
