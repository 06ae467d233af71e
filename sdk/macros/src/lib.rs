//! Export macros of the appliance SDK: turn a type implementing a plugin trait into the
//! exports of a WebAssembly component.
//!
//! `#[appliance_sdk::transform]` on a struct or enum keeps the item as written and adds a
//! hidden module that generates the `transform` world's bindings from the SDK's WIT (embedded
//! here at build time, so a plugin crate needs no copy of it) and forwards the exports to the
//! type's `appliance_sdk::Transform` implementation.

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use syn::{Item, parse_macro_input};

const PLUGIN_WIT: &str = include_str!("../../wit/plugin.wit");

/// Exports the annotated type, which implements `appliance_sdk::Transform`, as the plugin's
/// transform. A component exports one transform. Outside WebAssembly (a plugin's native unit
/// tests) the type is left as it is.
#[proc_macro_attribute]
pub fn transform(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[transform] takes no arguments",
        )
        .to_compile_error()
        .into();
    }
    let item = parse_macro_input!(item as Item);
    let name = match &item {
        Item::Struct(s) => s.ident.clone(),
        Item::Enum(e) => e.ident.clone(),
        other => {
            return syn::Error::new_spanned(other, "#[transform] goes on a struct or an enum")
                .to_compile_error()
                .into();
        }
    };
    let module = format_ident!("__appliance_transform_export_{}", name);
    quote! {
        #item

        #[doc(hidden)]
        #[cfg(target_family = "wasm")]
        #[allow(unsafe_code, missing_debug_implementations, non_snake_case, clippy::all)]
        mod #module {
            ::appliance_sdk::__private::wit_bindgen::generate!({
                inline: #PLUGIN_WIT,
                world: "appliance:plugin/transform",
                runtime_path: "::appliance_sdk::__private::wit_bindgen::rt",
                with: {
                    "appliance:plugin/types@0.1.0": ::appliance_sdk::wit::appliance::plugin::types,
                    "appliance:plugin/host@0.1.0": ::appliance_sdk::wit::appliance::plugin::host,
                },
            });

            static SLOT: ::appliance_sdk::__private::Slot<super::#name> =
                ::appliance_sdk::__private::Slot::new();

            struct Exports;

            impl exports::appliance::plugin::transformer::Guest for Exports {
                fn init(config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>)
                    -> ::std::result::Result<(), ::std::string::String>
                {
                    ::appliance_sdk::__private::transform_init(&SLOT, config)
                }

                fn process(
                    info: ::appliance_sdk::BatchInfo,
                    records: ::std::vec::Vec<::appliance_sdk::Record>,
                ) -> ::std::result::Result<(), ::appliance_sdk::RecordError> {
                    let output = ::appliance_sdk::__private::transform_process(&SLOT, info, records)?;
                    appliance::plugin::output::emit(&output);
                    Ok(())
                }
            }

            export!(Exports with_types_in self);
        }
    }
    .into()
}
