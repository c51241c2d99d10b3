//! Repairs after an unclean stop: delta chunks written after their last flush, and in-sync
//! copies that may differ where writes were in flight (the write-intent bitmap).

use super::chunk_bitmap::ChunkBitmap;
use super::shared::{Shared, State};
use super::state::ComponentState;
use super::view::{Outage, ResyncPlan, Source};
use crate::store::buf::AlignedBuf;

/// After an unclean stop, a delta's chunks first written after its last flush may not hold
/// what their presence bit claims. With an in-sync mirror at hand they are copied again from
/// it; without one they are dropped (the absent component still holds them as they were at
/// the last flush, which is all a crash promises), including from a resync reading the delta.
pub(super) fn repair_deltas(shared: &Shared, st: &mut State) {
    let mirror = st
        .view
        .in_sync()
        .find_map(|i| st.comps.get(i).and_then(|r| r.data.clone()));
    let (len, chunk) = (st.view.len, st.view.chunk_size);
    let intent = st.view.intent.clone();
    for d in st.view.deltas.iter_mut().filter(|d| !d.failed) {
        let mut tentative = d.present.clone();
        tentative.subtract(&d.durable);
        let mut rewritten = intent.clone();
        rewritten.intersect_with(&d.present);
        if mirror.is_some() {
            // Chunks the delta holds but that were written since the last flush may differ
            // from the mirror's copy: refresh them too.
            tentative.union_with(&rewritten);
        }
        if tentative.is_clear() {
            continue;
        }
        let Some(delta) = st.deltas.get(&d.for_component) else {
            continue;
        };
        let mut repaired = mirror.is_some();
        if let Some(m) = &mirror {
            let mut chunk_buf = AlignedBuf::scratch_len(chunk as usize);
            for k in tentative.iter_set() {
                let at = k * chunk;
                let buf = &mut chunk_buf[..chunk.min(len - at) as usize];
                if m.read_at(buf, at)
                    .and_then(|()| delta.data.write_at(buf, at))
                    .is_err()
                {
                    repaired = false;
                    break;
                }
            }
            repaired = repaired && delta.data.flush().is_ok();
        }
        if repaired {
            d.durable = d.present.clone();
            continue;
        }
        d.present = d.durable.clone();
        shared.event(format!(
            "delta {}: dropped {} unflushed chunks",
            d.path,
            tentative.count_ones()
        ));
        let Some(plan) = st
            .view
            .components
            .get_mut(d.for_component)
            .and_then(|c| c.outage.as_mut())
            .and_then(|o| o.resync.as_mut())
            .filter(|p| p.source == Source::Delta)
        else {
            continue;
        };
        let mut keep = d.durable.clone();
        keep.union_with(&plan.done);
        let mut drop = plan.work.clone();
        drop.subtract(&keep);
        plan.work.subtract(&drop);
    }
}

/// After an unclean stop, in-sync copies may differ in the chunks of the write-intent
/// bitmap: the first in-sync component's copy is taken as the truth and the others resync
/// those chunks from it (reads already prefer it, so the guest sees no change).
pub(super) fn resync_intent(shared: &Shared, st: &mut State) {
    let chunks = st.view.chunks();
    let intent = std::mem::replace(&mut st.view.intent, ChunkBitmap::new(chunks));
    if intent.is_clear() {
        return;
    }
    let Some(primary) = st.view.in_sync().next() else {
        return;
    };
    let mut moved = 0;
    for (i, rec) in st.view.components.iter_mut().enumerate() {
        if i == primary {
            continue;
        }
        if let Some(o) = rec.outage.as_mut().filter(|_| rec.state.is_absent()) {
            // It may have taken writes until the crash (it was found unreachable at this
            // open) or hold a resync's copies of unflushed data: it catches up on the intent
            // chunks too when it returns.
            o.tracking.union_with(&intent);
        } else if rec.state == ComponentState::InSync {
            rec.state = ComponentState::Stale;
            rec.outage = Some(Outage {
                start_lsn: rec.last_lsn,
                tracking: intent.clone(),
                resync: Some(ResyncPlan {
                    source: Source::Mirror(primary),
                    work: intent.clone(),
                    done: ChunkBitmap::new(intent.chunks()),
                }),
            });
            moved += 1;
        } else if let Some(o) = rec.outage.as_mut() {
            let tracking = o.tracking.clone();
            if let Some(plan) = o.resync.as_mut() {
                // The intent chunks come from the primary, which holds every chunk: a delta
                // source would not. The mirror then also covers the whole tracking bitmap.
                if plan.source == Source::Delta {
                    plan.work.union_with(&tracking);
                }
                plan.source = Source::Mirror(primary);
                plan.work.union_with(&intent);
                plan.done.subtract(&intent);
            }
        }
    }
    st.catching_up = st.view.components.iter().any(|c| c.state.is_catching_up());
    shared.event(format!(
        "unclean stop: {} chunks with writes in flight resync from component {primary} to {moved} other(s)",
        intent.count_ones()
    ));
}
