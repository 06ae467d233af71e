//! Export macros of the appliance SDK: turn a type implementing a plugin trait into the
//! exports of a WebAssembly component.
//!
//! `#[appliance_sdk::transform]`, `#[appliance_sdk::source]` and `#[appliance_sdk::sink]` on a
//! struct or enum keep the item as written and add a hidden module that generates the world's
//! bindings from the SDK's WIT (embedded here at build time, so a plugin crate needs no copy of
//! it) and forwards the exports to the type's `appliance_sdk::Transform`, `Source` or `Sink`
//! implementation. Outside WebAssembly (a plugin's native unit tests) the type is left as it
//! is.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::{format_ident, quote};
use syn::{Ident, Item, parse_macro_input};

const PLUGIN_WIT: &str = include_str!("../../wit/plugin.wit");

/// Exports the annotated type, which implements `appliance_sdk::Transform`, as the plugin's
/// transform. A component exports one transform.
#[proc_macro_attribute]
pub fn transform(attr: TokenStream, item: TokenStream) -> TokenStream {
    export(
        attr,
        item,
        "transform",
        "encoded-transform",
        "Transform",
        |name| {
            quote! {
                impl exports::appliance::plugin::encoded_transformer::Guest for Exports {
                    fn process(
                        info: ::appliance_sdk::BatchInfo,
                        records: ::std::vec::Vec<u8>,
                    ) -> ::std::result::Result<(), ::appliance_sdk::RecordError> {
                        let output =
                            ::appliance_sdk::__private::transform_process_encoded::<super::#name>(
                                &SLOT, info, &records,
                            )?;
                        appliance::plugin::encoded_output::emit(&output);
                        Ok(())
                    }
                }

                impl exports::appliance::plugin::transformer::Guest for Exports {
                    fn init(config: ::appliance_sdk::__private::Pairs)
                        -> ::std::result::Result<(), ::std::string::String>
                    {
                        ::appliance_sdk::__private::transform_init(&SLOT, config)
                    }

                    fn process(
                        info: ::appliance_sdk::BatchInfo,
                        records: ::std::vec::Vec<::appliance_sdk::Record>,
                    ) -> ::std::result::Result<(), ::appliance_sdk::RecordError> {
                        let output = ::appliance_sdk::__private::transform_process::<super::#name>(
                            &SLOT, info, records,
                        )?;
                        appliance::plugin::output::emit(&output);
                        Ok(())
                    }
                }
            }
        },
    )
}

/// Exports the annotated type, which implements `appliance_sdk::Source`, as the plugin's
/// source connector.
#[proc_macro_attribute]
pub fn source(attr: TokenStream, item: TokenStream) -> TokenStream {
    export(
        attr,
        item,
        "source",
        "acknowledging-source",
        "Source",
        |name| {
            quote! {
                impl exports::appliance::plugin::source_acknowledger::Guest for Exports {
                    fn polls_ahead() -> bool {
                        ::appliance_sdk::__private::source_polls_ahead(&SLOT)
                    }

                    fn acknowledge(position: ::std::vec::Vec<u8>)
                        -> ::std::result::Result<(), ::std::string::String>
                    {
                        ::appliance_sdk::__private::source_acknowledge(&SLOT, position)
                    }
                }

                impl exports::appliance::plugin::source_connector::Guest for Exports {
                    fn plan(
                        config: ::appliance_sdk::__private::Pairs,
                        max_tasks: u32,
                    ) -> ::std::result::Result<
                        ::std::vec::Vec<::appliance_sdk::__private::Pairs>,
                        ::std::string::String,
                    > {
                        ::appliance_sdk::__private::source_plan::<super::#name>(config, max_tasks)
                    }

                    fn init(
                        config: ::appliance_sdk::__private::Pairs,
                        resume_after: ::std::option::Option<::std::vec::Vec<u8>>,
                    ) -> ::std::result::Result<(), ::std::string::String> {
                        ::appliance_sdk::__private::source_init(&SLOT, config, resume_after)
                    }

                    fn poll(max: u32) -> ::std::result::Result<(), ::std::string::String> {
                        let records = ::appliance_sdk::__private::source_poll(&SLOT, max)?;
                        appliance::plugin::source_output::emit(&records);
                        Ok(())
                    }
                }
            }
        },
    )
}

/// Exports the annotated type, which implements `appliance_sdk::Sink`, as the plugin's sink
/// connector.
#[proc_macro_attribute]
pub fn sink(attr: TokenStream, item: TokenStream) -> TokenStream {
    export(attr, item, "sink", "sink", "Sink", |name| {
        quote! {
            impl exports::appliance::plugin::sink_connector::Guest for Exports {
                fn plan(
                    config: ::appliance_sdk::__private::Pairs,
                    max_tasks: u32,
                ) -> ::std::result::Result<
                    ::std::vec::Vec<::appliance_sdk::__private::Pairs>,
                    ::std::string::String,
                > {
                    ::appliance_sdk::__private::sink_plan::<super::#name>(config, max_tasks)
                }

                fn init(config: ::appliance_sdk::__private::Pairs)
                    -> ::std::result::Result<(), ::std::string::String>
                {
                    ::appliance_sdk::__private::sink_init(&SLOT, config)
                }

                fn put(
                    info: ::appliance_sdk::BatchInfo,
                    records: ::std::vec::Vec<::appliance_sdk::Record>,
                ) -> ::std::result::Result<(), ::appliance_sdk::RecordError> {
                    ::appliance_sdk::__private::sink_put(&SLOT, info, records)
                }

                fn flush() -> ::std::result::Result<(), ::std::string::String> {
                    ::appliance_sdk::__private::sink_flush(&SLOT)
                }
            }
        }
    })
}

/// The item as written (under `#[attribute]`), plus the hidden export module of `world`, whose
/// `Guest` impls for `Exports` the caller writes (given the type's name); `SLOT` holds the
/// instance. The world's `config-schema` export answers with the `SECRET_KEYS` of the type's
/// `trait_name` implementation.
fn export(
    attr: TokenStream,
    item: TokenStream,
    attribute: &str,
    world: &str,
    trait_name: &str,
    guest: impl FnOnce(&Ident) -> Tokens,
) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            format!("#[{attribute}] takes no arguments"),
        )
        .to_compile_error()
        .into();
    }
    let item = parse_macro_input!(item as Item);
    let name = match &item {
        Item::Struct(s) => s.ident.clone(),
        Item::Enum(e) => e.ident.clone(),
        other => {
            return syn::Error::new_spanned(
                other,
                format!("#[{attribute}] goes on a struct or an enum"),
            )
            .to_compile_error()
            .into();
        }
    };
    let module = format_ident!("__appliance_{}_export_{}", attribute, name);
    let world_name = format!("appliance:plugin/{world}");
    let guest = guest(&name);
    let trait_name = format_ident!("{}", trait_name);
    quote! {
        #item

        #[doc(hidden)]
        #[cfg(target_family = "wasm")]
        #[allow(unsafe_code, missing_debug_implementations, non_snake_case, clippy::all)]
        mod #module {
            ::appliance_sdk::__private::wit_bindgen::generate!({
                inline: #PLUGIN_WIT,
                world: #world_name,
                runtime_path: "::appliance_sdk::__private::wit_bindgen::rt",
                with: {
                    "appliance:plugin/types@0.1.0": ::appliance_sdk::wit::appliance::plugin::types,
                    "appliance:plugin/host@0.1.0": ::appliance_sdk::wit::appliance::plugin::host,
                },
            });

            static SLOT: ::appliance_sdk::__private::Slot<super::#name> =
                ::appliance_sdk::__private::Slot::new();

            struct Exports;

            #guest

            impl exports::appliance::plugin::config_schema::Guest for Exports {
                fn secret_keys() -> ::std::vec::Vec<::std::string::String> {
                    <super::#name as ::appliance_sdk::#trait_name>::SECRET_KEYS
                        .iter()
                        .map(|key| (*key).to_owned())
                        .collect()
                }
            }

            export!(Exports with_types_in self);
        }
    }
    .into()
}
