//! The FHIR XML reader on arbitrary bytes: it may refuse them, never panic; what it accepts
//! an independent reader (quick-xml) reads as well-formed, with every element in the FHIR or
//! the XHTML namespace; and it writes back to XML that reads to the same resource.
#![no_main]

use libfuzzer_sys::fuzz_target;
use passerelle::fhir::model::Model;
use passerelle::fhir::xml::{FHIR_NS, XHTML_NS, from_xml, to_xml};
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let model = Model::r4();
    if let Ok(resource) = from_xml(model, text) {
        let mut r = NsReader::from_str(text.strip_prefix('\u{feff}').unwrap_or(text));
        loop {
            match r.read_resolved_event() {
                Ok((ResolveResult::Bound(ns), Event::Start(_) | Event::Empty(_)))
                    if ns.0 == FHIR_NS || ns.0 == XHTML_NS => {}
                Ok((ns, Event::Start(e) | Event::Empty(e))) => {
                    panic!("accepted {:?} in namespace {ns:?}", e.name())
                }
                Ok((_, Event::Eof)) => break,
                Ok(_) => {}
                Err(e) => panic!("accepted what quick-xml refuses: {e}"),
            }
        }
        if let Ok(xml) = to_xml(model, &resource) {
            let again = from_xml(model, &xml).expect("the writer's own XML reads back");
            assert_eq!(again, resource);
        }
    }
});
