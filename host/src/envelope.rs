//! `Envelope`: an event on its way through the host, with the `Ticket` that
//! tracks when everything it caused is done.

use crate::checkpoint::Ticket;
use oplet_sdk::Event;
use std::sync::Arc;

pub struct Envelope {
    pub event: Arc<Event>,
    pub ticket: Ticket,
}
