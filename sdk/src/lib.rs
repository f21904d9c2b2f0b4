//! experiment
pub mod bindings {
    wit_bindgen::generate!({
        world: "host-imports",
        path: "../wit",
    });
}

pub mod groups {
    pub mod http {
        wit_bindgen::generate!({
            world: "http-plugin",
            path: "../wit",
            with: {
                "flowgate:plugin/types@0.1.0": crate::bindings::flowgate::plugin::types,
                "flowgate:plugin/log@0.1.0": crate::bindings::flowgate::plugin::log,
                "flowgate:plugin/config@0.1.0": crate::bindings::flowgate::plugin::config,
                "flowgate:plugin/key-value@0.1.0": crate::bindings::flowgate::plugin::key_value,
                "flowgate:plugin/clock@0.1.0": crate::bindings::flowgate::plugin::clock,
                "flowgate:plugin/random@0.1.0": crate::bindings::flowgate::plugin::random,
                "flowgate:plugin/outbound-http@0.1.0": crate::bindings::flowgate::plugin::outbound_http,
            },
            pub_export_macro: true,
            export_macro_name: "export_http",
            default_bindings_module: "flowgate_sdk::groups::http",
        });
    }
    pub mod tls {
        wit_bindgen::generate!({
            world: "tls-plugin",
            path: "../wit",
            with: {
                "flowgate:plugin/types@0.1.0": crate::bindings::flowgate::plugin::types,
                "flowgate:plugin/log@0.1.0": crate::bindings::flowgate::plugin::log,
                "flowgate:plugin/config@0.1.0": crate::bindings::flowgate::plugin::config,
                "flowgate:plugin/key-value@0.1.0": crate::bindings::flowgate::plugin::key_value,
                "flowgate:plugin/clock@0.1.0": crate::bindings::flowgate::plugin::clock,
                "flowgate:plugin/random@0.1.0": crate::bindings::flowgate::plugin::random,
                "flowgate:plugin/outbound-http@0.1.0": crate::bindings::flowgate::plugin::outbound_http,
            },
            pub_export_macro: true,
            export_macro_name: "export_tls",
            default_bindings_module: "flowgate_sdk::groups::tls",
        });
    }
}
