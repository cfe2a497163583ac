//! The plugin author's tools behind `oplet plugin new`, `oplet plugin test` and
//! `oplet events record`: scaffold a project, check a module against expected
//! effects, and capture real events to test with. The CLI (`cli.rs`) only parses.

pub mod plugin_test;
pub mod record;
pub mod scaffold;
