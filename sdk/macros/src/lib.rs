//! `#[flowgate_sdk::hooks]`: put on an impl of one of flowgate-sdk's hook traits, it adds
//! the trait's `IMPLEMENTED` constant naming the hooks the impl writes out (the others
//! keep the trait's no-op defaults), which the SDK exports as the WIT's `hook-list`, so
//! the host never calls the rest. Without it every hook of an exported group is called.
//!
//! No dependencies: the impl's tokens are passed through unchanged, and only its
//! top-level `fn NAME` pairs are read (a trait impl holds nothing else that is a `fn`).

use proc_macro::{Delimiter, Group, TokenStream, TokenTree};

/// Marks an impl of a flowgate-sdk hook trait so that only the hooks it defines are called.
///
/// ```text
/// #[flowgate_sdk::hooks]
/// impl HttpHooks for AddHeader {
///     fn request_headers(_flow: &Flow, request: &Request) -> Verdict { Verdict::Continue }
/// }
/// ```
#[proc_macro_attribute]
pub fn hooks(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return error("#[flowgate_sdk::hooks] takes no arguments");
    }
    let mut tokens: Vec<TokenTree> = item.into_iter().collect();
    let is_impl = tokens.iter().any(|t| matches!(t, TokenTree::Ident(i) if i.to_string() == "impl"));
    let body = match tokens.last() {
        Some(TokenTree::Group(g)) if is_impl && g.delimiter() == Delimiter::Brace => g.clone(),
        _ => return error("#[flowgate_sdk::hooks] goes on an `impl HttpHooks for MyPlugin { .. }`"),
    };
    let names = fn_names(body.stream());
    let mut inner: Vec<TokenTree> = body.stream().into_iter().collect();
    inner.extend(implemented_const(&names));
    let mut group = Group::new(Delimiter::Brace, inner.into_iter().collect());
    group.set_span(body.span());
    *tokens.last_mut().expect("checked above") = TokenTree::Group(group);
    tokens.into_iter().collect()
}

/// The names after each top-level `fn`, as WIT names (`request_headers` -> `request-headers`).
fn fn_names(body: TokenStream) -> Vec<String> {
    let mut names = Vec::new();
    let mut after_fn = false;
    for token in body {
        match token {
            TokenTree::Ident(ident) if after_fn => {
                names.push(ident.to_string().trim_start_matches("r#").replace('_', "-"));
                after_fn = false;
            }
            TokenTree::Ident(ident) => after_fn = ident.to_string() == "fn",
            _ => after_fn = false,
        }
    }
    names
}

/// `const IMPLEMENTED: &'static [&'static str] = &["a", "b"];`
fn implemented_const(names: &[String]) -> TokenStream {
    let list: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    format!("const IMPLEMENTED: &'static [&'static str] = &[{}];", list.join(", ")).parse().expect("a valid const item")
}

/// `compile_error!("message");`
fn error(message: &str) -> TokenStream {
    format!("compile_error!({message:?});").parse().expect("a valid macro call")
}
