//! The FHIR XML reader on arbitrary bytes: it may refuse them, never panic; and what it
//! accepts writes back to XML that reads to the same resource.
#![no_main]

use libfuzzer_sys::fuzz_target;
use passerelle::fhir::model::Model;
use passerelle::fhir::xml::{from_xml, to_xml};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let model = Model::r4();
    if let Ok(resource) = from_xml(model, text) {
        if let Ok(xml) = to_xml(model, &resource) {
            let again = from_xml(model, &xml).expect("the writer's own XML reads back");
            assert_eq!(again, resource);
        }
    }
});
