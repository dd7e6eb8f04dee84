//! Virtual hold (queue `callback_number`): the caller keys in or confirms
//! a number and is called back instead of waiting; the number is read back
//! and checked against the tenant's dial plan before it is stored.

use super::*;

impl Engine {
    /// Stores the callback a waiting caller asked for (the answer comes
    /// back as [`Engine::callback_stored`]).
    pub(super) fn vhold_store(&mut self, call_id: CallId, number: String) {
        let Some(queue) = self.calls.get(&call_id).map(|c| c.queue) else {
            return;
        };
        // Checked before it was read back; stored as the plan reads it.
        let number = self
            .dialable(self.queue_tenant(queue), &number, "virtual_hold")
            .unwrap_or(number);
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        call.callback_asked = true;
        call.vhold = None;
        info!(number = %Masked(&number), "caller asks to be called back");
        // The time the call entered the queue, on the wall clock.
        let enqueued_unix = self.wall.1
            + call
                .enqueued
                .saturating_duration_since(self.wall.0)
                .as_secs() as i64
            - self
                .wall
                .0
                .saturating_duration_since(call.enqueued)
                .as_secs() as i64;
        self.out.push_back(Output::StoreCallback {
            call: call_id,
            queue: self.router.queue(call.queue).name.clone(),
            number,
            enqueued_unix,
        });
    }

    /// The next step of the number dialogue: its prompts (the number read
    /// back digit by digit, or the request for another), then the music;
    /// a key is awaited for the queue's timeout after them.
    pub(super) fn vhold_ask(&mut self, now: Instant, call_id: CallId, step: Vhold) {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let q = call.queue.0 as usize;
        let Some(cfg) = self.queues[q].callback_number.as_ref() else {
            return;
        };
        let names: Vec<String> = match &step {
            Vhold::Confirm(number) => cfg
                .read_prompts
                .iter()
                .cloned()
                .chain(
                    number
                        .chars()
                        .filter(char::is_ascii_digit)
                        .map(|d| format!("digits/{d}")),
                )
                .chain(cfg.confirm_prompts.iter().cloned())
                .collect(),
            Vhold::Enter(..) => cfg.enter_prompts.clone(),
        };
        let timeout = cfg.timeout;
        let prompts = names_to_prompts(&names, &self.prompts);
        let duration: Duration = prompts.iter().map(Prompt::duration).sum();
        call.vhold = Some(step);
        call.vhold_step += 1;
        let step = call.vhold_step;
        if call.media.opened {
            self.out.push_back(Output::Media(MediaCommand::Play {
                call: call_id,
                prompts,
                music: self.queues[q].music.clone(),
            }));
        }
        self.timers.push(Reverse((
            now + duration + timeout,
            call_id,
            CallTimer::Vhold(step),
        )));
    }

    /// A key during the number dialogue.
    pub(super) fn vhold_digit(&mut self, now: Instant, call_id: CallId, digit: char) {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        match (call.vhold.take(), digit) {
            (Some(Vhold::Confirm(number)), '1') => {
                self.metrics
                    .callbacks
                    .with_label_values(&["number_confirmed"])
                    .inc();
                self.vhold_store(call_id, number);
            }
            (Some(Vhold::Confirm(_)), '2') => {
                self.vhold_ask(now, call_id, Vhold::Enter(String::new(), 0));
            }
            (Some(Vhold::Enter(digits, tries)), '#') => {
                self.vhold_entered(now, call_id, digits, tries);
            }
            (Some(Vhold::Enter(_, tries)), '*') => {
                // Start again.
                self.vhold_ask(now, call_id, Vhold::Enter(String::new(), tries));
            }
            (Some(Vhold::Enter(mut digits, tries)), d) if d.is_ascii_digit() => {
                if digits.len() < 15 {
                    digits.push(d);
                }
                call.vhold = Some(Vhold::Enter(digits, tries));
                // The inter-digit wait starts again.
                call.vhold_step += 1;
                let step = call.vhold_step;
                if let Some(cfg) = &self.queues[call.queue.0 as usize].callback_number {
                    self.timers.push(Reverse((
                        now + cfg.timeout,
                        call_id,
                        CallTimer::Vhold(step),
                    )));
                }
            }
            (other, _) => call.vhold = other,
        }
    }

    /// The caller ended a number (`#` or silence): read it back, or ask
    /// again, or give up after [`VHOLD_TRIES`].
    pub(super) fn vhold_entered(
        &mut self,
        now: Instant,
        call_id: CallId,
        digits: String,
        tries: u8,
    ) {
        let Some(queue) = self.calls.get(&call_id).map(|c| c.queue) else {
            return;
        };
        // A premium or foreign number keyed in is asked again like a
        // mistyped one: the dial plan, not the caller, decides what a
        // trunk dials.
        if self
            .dialable(self.queue_tenant(queue), &digits, "virtual_hold")
            .is_some()
        {
            self.vhold_ask(now, call_id, Vhold::Confirm(digits));
        } else if tries + 1 < VHOLD_TRIES {
            info!("callback number not usable: asking again");
            self.vhold_ask(now, call_id, Vhold::Enter(String::new(), tries + 1));
        } else {
            self.vhold_give_up(now, call_id);
        }
    }

    /// No key when one was awaited.
    pub(super) fn vhold_timeout(&mut self, now: Instant, call_id: CallId) {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        match call.vhold.take() {
            Some(Vhold::Enter(digits, tries)) => self.vhold_entered(now, call_id, digits, tries),
            // Silence instead of a confirmation: no callback.
            Some(Vhold::Confirm(_)) => self.vhold_give_up(now, call_id),
            None => {}
        }
    }

    /// The dialogue ended without a number: the caller keeps their place
    /// and the music.
    pub(super) fn vhold_give_up(&mut self, now: Instant, call_id: CallId) {
        if self.unserved_failed(now, call_id) {
            return;
        }
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        call.vhold = None;
        info!("no callback number confirmed: the caller keeps waiting");
        self.metrics
            .callbacks
            .with_label_values(&["no_number"])
            .inc();
        if call.media.opened {
            self.out.push_back(Output::Media(MediaCommand::Play {
                call: call_id,
                prompts: Vec::new(),
                music: self.queues[call.queue.0 as usize].music.clone(),
            }));
        }
    }
}
