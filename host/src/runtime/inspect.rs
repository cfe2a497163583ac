//! What a module declares, read before it is compiled: its memories and tables.
//!
//! Compiling costs seconds for a large module and its native code is what runs,
//! so everything the declarations alone can refuse is refused here, with the
//! reason: more than one memory, a 64-bit or shared memory, 64-bit tables, and an
//! initial memory plus tables already past the plugin's memory budget.

use super::plugin::LoadError;

/// Bytes one table element costs the host (a pointer), counted in the budget.
pub const TABLE_ELEMENT_BYTES: u64 = 8;
const PAGE: u64 = 64 * 1024;

/// The declared footprint of a module.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Footprint {
    pub memories: usize,
    /// Initial size of the memory, in bytes.
    pub initial_memory: u64,
    pub tables: usize,
    /// Initial elements of all tables.
    pub initial_table_elements: u64,
}

impl Footprint {
    /// Bytes the instance holds as soon as it exists.
    pub fn initial_bytes(&self) -> u64 {
        self.initial_memory.saturating_add(self.initial_table_elements.saturating_mul(TABLE_ELEMENT_BYTES))
    }
}

/// Reads the module's declarations and refuses what the sandbox does not run, or
/// what would not fit `budget` bytes from the start.
pub fn inspect(wasm: &[u8], budget: usize) -> Result<Footprint, LoadError> {
    if wasm.is_empty() {
        return Err(LoadError::Compile("the file is empty (0 bytes); deploy the built .wasm module".into()));
    }
    let mut f = Footprint::default();
    // wasmparser's messages may span lines (byte arrays); a log line must not.
    let bad = |e: wasmparser::BinaryReaderError| LoadError::Compile(super::compile::one_line(&e.to_string()));
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload.map_err(bad)? {
            wasmparser::Payload::Version { encoding: wasmparser::Encoding::Component, .. } => {
                return Err(LoadError::Unsupported(
                    "is a WebAssembly component; a plugin is a core module (docs/abi.md section 1)".into(),
                ));
            }
            wasmparser::Payload::MemorySection(reader) => {
                for m in reader {
                    let m = m.map_err(bad)?;
                    f.memories += 1;
                    if m.memory64 {
                        return Err(LoadError::Unsupported(
                            "declares a 64-bit memory (memory64); a plugin has one 32-bit memory (docs/abi.md section 1)".into(),
                        ));
                    }
                    if m.shared {
                        return Err(LoadError::Unsupported(
                            "declares a shared memory (threads); a plugin has one unshared memory (docs/abi.md section 1)".into(),
                        ));
                    }
                    if m.page_size_log2.is_some_and(|p| p != 16) {
                        return Err(LoadError::Unsupported("declares a custom page size; a plugin uses 64 KiB pages".into()));
                    }
                    f.initial_memory = f.initial_memory.saturating_add(m.initial.saturating_mul(PAGE));
                }
            }
            wasmparser::Payload::TableSection(reader) => {
                for t in reader {
                    let t = t.map_err(bad)?;
                    f.tables += 1;
                    if t.ty.table64 {
                        return Err(LoadError::Unsupported(
                            "declares a 64-bit table (memory64); a plugin's tables are 32-bit".into(),
                        ));
                    }
                    f.initial_table_elements = f.initial_table_elements.saturating_add(t.ty.initial);
                }
            }
            _ => {}
        }
    }
    if f.memories > 1 {
        return Err(LoadError::Unsupported(format!(
            "declares {} memories; a plugin has exactly one memory, exported as `memory`, so that one budget covers it (docs/abi.md section 1)",
            f.memories
        )));
    }
    let budget = budget as u64;
    if f.initial_bytes() > budget {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        return Err(LoadError::Budget(format!(
            "needs {:.1} MiB as soon as it is instantiated ({:.1} MiB of initial memory, {} table elements), past its memory budget of {:.1} MiB; \
             raise [limits] memory_mb in its manifest (up to the host's ceiling) or lower the module's initial memory and table sizes",
            mib(f.initial_bytes()),
            mib(f.initial_memory),
            f.initial_table_elements,
            mib(budget)
        )));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wasm(wat: &str) -> Vec<u8> {
        wat::parse_str(wat).unwrap()
    }

    #[test]
    fn counts_memory_and_tables() {
        let f = inspect(&wasm("(module (memory 2) (table 10 funcref) (table 5 externref))"), 1 << 20).unwrap();
        assert_eq!(f, Footprint { memories: 1, initial_memory: 2 * PAGE, tables: 2, initial_table_elements: 15 });
    }

    #[test]
    fn refuses_what_one_budget_cannot_cover() {
        let two = inspect(&wasm("(module (memory 1) (memory 1))"), 1 << 30).unwrap_err().to_string();
        assert!(two.contains("declares 2 memories; a plugin has exactly one memory"), "{two}");
        let m64 = inspect(&wasm("(module (memory i64 1))"), 1 << 30).unwrap_err().to_string();
        assert!(m64.contains("64-bit memory (memory64)"), "{m64}");
        let big = inspect(&wasm("(module (memory 300))"), 16 << 20).unwrap_err().to_string();
        assert!(big.contains("18.8 MiB of initial memory") && big.contains("memory budget of 16.0 MiB"), "{big}");
        let tables = inspect(&wasm("(module (table 3000000 funcref))"), 16 << 20).unwrap_err().to_string();
        assert!(tables.contains("3000000 table elements"), "{tables}");
        assert!(inspect(&[], 1).unwrap_err().to_string().contains("empty (0 bytes)"));
        let garbage = inspect(b"\x7fELF not wasm", 1).unwrap_err().to_string();
        assert!(garbage.starts_with("not a valid WebAssembly module: magic header not detected") && !garbage.contains('\n'), "{garbage}");
    }
}
