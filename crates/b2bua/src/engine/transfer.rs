//! IVR transfers to an external number through the tenant's outbound
//! trunk (dial plan applied), falling back to the flow when they fail.

use super::*;

impl Engine {
    /// Places the INVITE of an IVR transfer through the caller's tenant's
    /// outbound trunk (from the operator-side port). `false` when there is
    /// no trunk to leave through.
    pub(super) fn start_transfer(&mut self, now: Instant, id: CallId, number: &str) -> bool {
        let Some(call) = self.calls.get(&id) else {
            return false;
        };
        let tenant = call.tenant;
        let trunk = self
            .trunks
            .iter()
            .position(|t| t.dials_for(tenant))
            .map(TrunkId::at);
        let Some((mut leg, mut inv, _)) =
            trunk.and_then(|t| self.citizen_leg(t, number, "transfer", None))
        else {
            warn!("IVR transfer: no outbound trunk for this tenant");
            return false;
        };
        // No session timer offered: the transfer's leg has no refresher
        // yet, and a carrier answering `refresher=uac` to our offer would
        // cut a long call when no refresh came. Without the extension
        // (RFC 4028 §9) only the carrier itself may refresh.
        inv.remove("Session-Expires");
        inv.remove("Supported");
        let (flow, call_id) = (leg.flow, leg.call_id.clone());
        inv.push("Contact", &dialog::contact(flow));
        inv.push("User-Agent", &self.user_agent);
        let Some(call) = self.calls.get(&id) else {
            return false;
        };
        let body = sdp_offer(
            &call.media,
            &self.codecs,
            call.media.b_port,
            call.media.session + 1,
        );
        inv.set_body(Some("application/sdp"), body);
        info!(number = %Masked(number), "IVR transfer: dialling");
        let key = self.send_request(now, flow, inv, ClientRef::Transfer(id));
        self.by_b.insert(call_id.clone(), id);
        if let Some(call) = self.calls.get_mut(&id) {
            // Our side of the dialog-to-be (local tag, flow); the far end's
            // part arrives with its answer.
            leg.remote.clear();
            leg.remote_target.clear();
            call.transfer = Some(TransferLeg {
                call_id,
                invite: Some(key),
                dialog: Some(leg),
                by_operator: false,
            });
        }
        true
    }

    /// The transfer's far end did not answer: the flow's fallback, or for
    /// an operator's transfer the caller's queue again (no dead end).
    pub(super) fn transfer_failed(&mut self, now: Instant, id: CallId) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let by_operator = call.transfer.take().is_some_and(|t| {
            self.by_b.remove(&t.call_id);
            t.by_operator
        });
        if by_operator {
            let (queue, spec) = (call.queue, (*call.spec).clone());
            info!("the number did not answer: the caller waits in their queue again");
            self.enter_queue(now, id, queue, &spec);
            return;
        }
        let Some(mut run) = call.run.take() else {
            return;
        };
        let actions = run.transfer_result(now, &facts!(self, now));
        call.run = Some(run);
        self.flow_actions(now, id, actions);
    }

    /// A response to an IVR transfer's INVITE.
    pub(super) fn on_transfer_response(
        &mut self,
        now: Instant,
        key: TxKey,
        id: CallId,
        msg: &Message,
    ) {
        let code = msg.code();
        if code < 200 {
            return;
        }
        self.client.remove(&key);
        let _span = self.call_span(id).entered();
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(t) = call.transfer.as_mut() else {
            return;
        };
        t.invite = None;
        if matches!(code, 401 | 407) {
            let flow = t.dialog.as_ref().map_or(call.a_leg.flow, |l| l.flow);
            if let Some(retry) =
                self.authenticated_retry(now, &key, flow, msg, ClientRef::Transfer(id))
            {
                if let Some(t) = self.calls.get_mut(&id).and_then(|c| c.transfer.as_mut()) {
                    t.invite = Some(retry);
                }
                return;
            }
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(t) = call.transfer.as_mut() else {
            return;
        };
        if !(200..300).contains(&code) {
            info!(code, "IVR transfer not answered");
            self.transfer_failed(now, id);
            return;
        }
        let local = t
            .dialog
            .as_ref()
            .map(|l| l.local.clone())
            .unwrap_or_default();
        let flow = t.dialog.as_ref().map_or(call.a_leg.flow, |l| l.flow);
        let leg = Leg::from_response(&local, flow, msg);
        t.dialog = Some(leg.clone());
        let peer = b_answer(msg, &self.codecs, flow.remote.ip()).filter(|(p, _)| {
            self.refused_media(p.addr, flow.remote.ip(), flow.local.ip())
                .is_none()
        });
        self.send_ack(&leg, msg);
        let Some((peer, direction)) = peer else {
            warn!("IVR transfer: the far end's SDP is unusable");
            self.end_connected(now, id, true, true, CallOutcome::BadAnswer);
            return;
        };
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.media.b = Some(peer);
        call.media.b_direction = direction;
        call.phase = Phase::Connected;
        call.connected = Some((now, "transfer".to_owned()));
        // The queue log keeps the transfer (an IVR transfer never entered a
        // queue: the queue is empty).
        let record = Record::Queue {
            call: call.record_id.clone(),
            at_ms: self.unix_ms_at(now),
            queue: String::new(),
            event: QueueEvent::Transfer,
            agent: None,
            position: None,
            wait_ms: None,
        };
        self.out.push_back(Output::Record(record));
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        self.out.push_back(Output::Media(MediaCommand::Bridge {
            call: id,
            b: peer.into(),
            record: false,
        }));
        if let Some(flow) = call.run.as_ref().map(|r| r.flow().to_owned()) {
            self.metrics
                .flow_calls
                .with_label_values(&[&flow, "transferred"])
                .inc();
        }
        info!("IVR transfer answered");
    }
}
