//! Export macros of the appliance SDK: turn a type implementing a plugin trait into a
//! WebAssembly component export. They arrive with the plugin host.
