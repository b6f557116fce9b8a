//! `#[derive(DomainEvent)]`: writes `evershard_model::DomainEvent` for an event enum whose
//! variants each wrap one payload struct. Use it as `evershard_model::DomainEvent` (the derive
//! is re-exported there under the trait's name, as serde does), never from this crate.
//!
//! ```ignore
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
//! #[event(topic = TOPIC, version = "1.0")]
//! pub enum PlantEvent {
//!     #[event(name = "plant.created", version = "1.1", payload_json = created_json)]
//!     PlantCreated(PlantCreated),
//!     StockReserved(StockReserved), // event_type "StockReserved", version "1.0"
//! }
//! ```
//!
//! Keys, on the enum (defaults for every variant) or on a variant (that variant only):
//! - `topic = EXPR` — the outbound topic; required for every variant;
//! - `version = EXPR` — the contract version; required for every variant;
//! - `payload_json = PATH` — a function `fn(&Payload) -> serde_json::Value`; on the enum it
//!   must be generic over the payload (`fn f<T: Serialize>(&T) -> Value`). Default:
//!   `evershard_model::json_payload`.
//!
//! on a variant only:
//! - `name = EXPR` — the `event_type`; default: the variant's name as a string;
//!
//! and on the enum only:
//! - `crate = PATH` — where evershard-model is, for a crate that reaches it through another
//!   name (`crate = ::evershard::model` behind the facade); default: `::evershard_model`.
//!
//! `EXPR` is anything of type `&'static str` (a literal or a constant), so a contract's
//! constants stay the single source of its names.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{parse_macro_input, Attribute, Data, DeriveInput, Expr, Fields, Ident, Path};

/// See the crate docs.
#[proc_macro_derive(DomainEvent, attributes(event))]
pub fn derive_domain_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// The `#[event(..)]` keys found on one item. Each key may appear once per item.
#[derive(Default)]
struct EventAttrs {
    name: Option<Expr>,
    version: Option<Expr>,
    topic: Option<Expr>,
    payload_json: Option<Path>,
    krate: Option<Path>,
}

/// Which item the attributes sit on: `name` only makes sense on a variant.
#[derive(Clone, Copy, PartialEq)]
enum Level {
    Enum,
    Variant,
}

fn set<T>(slot: &mut Option<T>, value: T, key: &str, span: Span) -> syn::Result<()> {
    if slot.is_some() {
        return Err(syn::Error::new(
            span,
            format!("duplicate `{key}` in #[event(..)]"),
        ));
    }
    *slot = Some(value);
    Ok(())
}

fn parse_attrs(attrs: &[Attribute], level: Level) -> syn::Result<EventAttrs> {
    let mut out = EventAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("event")) {
        attr.parse_nested_meta(|meta| {
            let span = meta.path.span();
            if meta.path.is_ident("name") {
                if level == Level::Enum {
                    return Err(meta.error(
                        "`name` belongs on a variant: each variant has its own event_type",
                    ));
                }
                set(&mut out.name, meta.value()?.parse()?, "name", span)
            } else if meta.path.is_ident("version") {
                set(&mut out.version, meta.value()?.parse()?, "version", span)
            } else if meta.path.is_ident("topic") {
                set(&mut out.topic, meta.value()?.parse()?, "topic", span)
            } else if meta.path.is_ident("crate") {
                if level == Level::Variant {
                    return Err(meta.error("`crate` belongs on the enum"));
                }
                set(&mut out.krate, meta.value()?.parse()?, "crate", span)
            } else if meta.path.is_ident("payload_json") {
                set(
                    &mut out.payload_json,
                    meta.value()?.parse()?,
                    "payload_json",
                    span,
                )
            } else {
                Err(meta.error(
                    "unknown #[event(..)] key; expected `name`, `version`, `topic`, `payload_json` or `crate`",
                ))
            }
        })?;
    }
    Ok(out)
}

fn expand(input: DeriveInput) -> syn::Result<TokenStream2> {
    let data =
        match &input.data {
            Data::Enum(data) => data,
            _ => return Err(syn::Error::new(
                input.ident.span(),
                "#[derive(DomainEvent)] needs an enum whose variants each wrap one payload struct",
            )),
        };
    if data.variants.is_empty() {
        return Err(syn::Error::new(
            input.ident.span(),
            "#[derive(DomainEvent)] needs at least one variant",
        ));
    }
    let defaults = parse_attrs(&input.attrs, Level::Enum)?;
    let krate = defaults
        .krate
        .clone()
        .map_or_else(|| quote!(::evershard_model), |p| quote!(#p));

    let (mut names, mut versions, mut topics, mut payloads) = (vec![], vec![], vec![], vec![]);
    let mut payloads_into = vec![];
    let mut topics_by_name = vec![];
    let mut versions_by_name = vec![];
    let mut errors: Option<syn::Error> = None;
    let mut push_error = |e: syn::Error| match &mut errors {
        Some(all) => all.combine(e),
        None => errors = Some(e),
    };
    for variant in &data.variants {
        let ident: &Ident = &variant.ident;
        match &variant.fields {
            Fields::Unnamed(fields) if fields.unnamed.len() == 1 => {}
            _ => {
                push_error(syn::Error::new(
                    variant.span(),
                    format!("variant `{ident}` must wrap exactly one payload: `{ident}({ident})`"),
                ));
                continue;
            }
        }
        let own = match parse_attrs(&variant.attrs, Level::Variant) {
            Ok(own) => own,
            Err(e) => {
                push_error(e);
                continue;
            }
        };
        let name = own.name.map_or_else(
            || {
                let text = ident.to_string();
                quote_spanned!(ident.span()=> #text)
            },
            |e| quote!(#e),
        );
        let Some(version) = own.version.or_else(|| defaults.version.clone()) else {
            push_error(syn::Error::new(
                ident.span(),
                format!("no version for `{ident}`: add #[event(version = ..)] to the enum or the variant"),
            ));
            continue;
        };
        let Some(topic) = own.topic.or_else(|| defaults.topic.clone()) else {
            push_error(syn::Error::new(
                ident.span(),
                format!(
                    "no topic for `{ident}`: add #[event(topic = ..)] to the enum or the variant"
                ),
            ));
            continue;
        };
        let custom = own.payload_json.or_else(|| defaults.payload_json.clone());
        // The default payload is written without its `Value` tree; a custom one through it.
        payloads_into.push(match &custom {
            None => quote!(Self::#ident(payload) => #krate::json::write_json_payload(payload, out)),
            Some(p) => quote!(Self::#ident(payload) => #krate::__private::serde_json::to_writer(
                &mut *out, &#p(payload)).expect("a JSON value always encodes")),
        });
        let payload = custom.map_or_else(|| quote!(#krate::json_payload), |p| quote!(#p));
        names.push(quote!(Self::#ident(_) => #name));
        versions.push(quote!(Self::#ident(_) => #version));
        topics.push(quote!(Self::#ident(_) => #topic));
        topics_by_name.push(quote!(if event_type == #name { return Some(#topic); }));
        versions_by_name.push(quote!(if event_type == #name { return Some(#version); }));
        payloads.push(quote!(Self::#ident(payload) => #payload(payload)));
    }
    if let Some(errors) = errors {
        return Err(errors);
    }

    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics #krate::DomainEvent for #ident #ty_generics #where_clause {
            fn event_type(&self) -> &'static str {
                match self { #(#names,)* }
            }
            fn event_version(&self) -> &'static str {
                match self { #(#versions,)* }
            }
            fn topic(&self) -> &'static str {
                match self { #(#topics,)* }
            }
            fn topic_of(event_type: &str) -> Option<&'static str> {
                #(#topics_by_name)*
                None
            }
            fn version_of(event_type: &str) -> Option<&'static str> {
                #(#versions_by_name)*
                None
            }
            fn payload_json(&self) -> #krate::__private::serde_json::Value {
                match self { #(#payloads,)* }
            }
            fn write_payload_json(&self, out: &mut ::std::vec::Vec<u8>) {
                match self { #(#payloads_into,)* }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    fn error_of(input: DeriveInput) -> String {
        match expand(input) {
            Ok(tokens) => panic!("expected an error, got {tokens}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn expands_defaults_and_overrides() {
        let tokens = expand(parse_quote! {
            #[event(topic = TOPIC, version = "1.0")]
            enum E {
                A(A),
                #[event(name = "e.b", version = "1.1", payload_json = custom)]
                B(B),
            }
        })
        .unwrap()
        .to_string();
        assert!(tokens.contains(r#"Self :: A (_) => "A""#), "{tokens}");
        assert!(tokens.contains(r#"Self :: B (_) => "e.b""#), "{tokens}");
        assert!(tokens.contains(r#"Self :: B (_) => "1.1""#), "{tokens}");
        assert!(tokens.contains("Self :: A (_) => TOPIC"), "{tokens}");
        assert!(
            tokens.contains("Self :: A (payload) => :: evershard_model :: json_payload (payload)"),
            "{tokens}"
        );
        assert!(
            tokens.contains("Self :: B (payload) => custom (payload)"),
            "{tokens}"
        );
    }

    #[test]
    fn refuses_unknown_keys() {
        let message = error_of(parse_quote! {
            #[event(topic = "t", version = "1.0", tpoic = "x")]
            enum E { A(A) }
        });
        assert!(message.contains("unknown #[event(..)] key"), "{message}");
    }

    #[test]
    fn refuses_variants_without_exactly_one_field() {
        for input in [
            parse_quote! { #[event(topic = "t", version = "1.0")] enum E { A } },
            parse_quote! { #[event(topic = "t", version = "1.0")] enum E { A(X, Y) } },
            parse_quote! { #[event(topic = "t", version = "1.0")] enum E { A { x: X } } },
        ] {
            let message = error_of(input);
            assert!(
                message.contains("must wrap exactly one payload"),
                "{message}"
            );
        }
    }

    #[test]
    fn refuses_missing_contract_keys_structs_and_duplicates() {
        let message = error_of(parse_quote! { #[event(topic = "t")] enum E { A(A) } });
        assert!(message.contains("no version for `A`"), "{message}");
        let message = error_of(parse_quote! { #[event(version = "1.0")] enum E { A(A) } });
        assert!(message.contains("no topic for `A`"), "{message}");
        let message = error_of(parse_quote! { #[event(name = "x")] enum E { A(A) } });
        assert!(message.contains("`name` belongs on a variant"), "{message}");
        let message = error_of(parse_quote! {
            #[event(topic = "t", version = "1.0")]
            enum E { #[event(crate = x)] A(A) }
        });
        assert!(message.contains("`crate` belongs on the enum"), "{message}");
        let message = error_of(parse_quote! { struct S(A); });
        assert!(message.contains("needs an enum"), "{message}");
        let message = error_of(parse_quote! {
            #[event(topic = "t", version = "1.0")]
            enum E { #[event(name = "a", name = "b")] A(A) }
        });
        assert!(message.contains("duplicate `name`"), "{message}");
    }
}
