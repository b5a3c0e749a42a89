//! The untrusted relay: a store-and-forward message queue, the device-list server and the
//! prekey server, all of which the events make lossy or malicious.
//!
//! Messages wait in the queue until their device takes them and acknowledges them, as a real
//! server keeps them until it has the acknowledgement; so a delivery whose acknowledgement is
//! lost comes again, and picking any ready item reorders. Faults beyond that are events: hold an
//! item back, hand a device something it already took, or discard an item for good (denial of
//! service, which the simulation counts as an exclusion rather than a loss). Lists and prekey
//! bundles are served honestly, or withheld, rolled back or stale.

use std::collections::{BTreeMap, BTreeSet};

use multidevice::{AccountId, DeviceAddress, PrekeyBundle, PrekeyUpload, Timestamp};

use super::script::ListMode;

/// What an item carries, for statistics and to know what dropping it loses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Carries {
    /// A session message (a fan-out copy, a sender-key distribution or a retry answer).
    Envelope,
    /// One device's copy of a group message.
    GroupMessage,
    /// A retry request.
    RetryRequest,
}

/// Something waiting for one device.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    /// Numbers items in the order they were queued (a replayed copy gets a new number).
    pub(crate) id: u64,
    pub(crate) to: DeviceAddress,
    pub(crate) bytes: Vec<u8>,
    pub(crate) body: Option<Vec<u8>>,
    pub(crate) carries: Carries,
    /// Not handed out before this time.
    pub(crate) ready_at: Timestamp,
}

/// Delivered items kept for replays.
const HISTORY: usize = 64;

#[derive(Default, Clone)]
pub(crate) struct Relay {
    queue: Vec<Item>,
    next_id: u64,
    history: Vec<Item>,
    /// Every list published, per account, oldest first.
    lists: BTreeMap<AccountId, Vec<Vec<u8>>>,
    /// How each account's lists are served; honest when absent. Withholding freezes the
    /// number of lists served.
    modes: BTreeMap<AccountId, (ListMode, usize)>,
    replays_served: usize,
    /// Every prekey upload, per device, oldest first, with the one-time prekeys handed out.
    uploads: BTreeMap<DeviceAddress, (Vec<PrekeyUpload>, BTreeSet<u32>)>,
    pub(crate) stale_bundles: bool,
}

impl Relay {
    /// Queues an item for `to`.
    pub(crate) fn push(
        &mut self,
        to: DeviceAddress,
        bytes: Vec<u8>,
        body: Option<Vec<u8>>,
        carries: Carries,
        ready_at: Timestamp,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        self.queue.push(Item { id, to, bytes, body, carries, ready_at });
    }

    /// Where the item numbered `id` is in the queue, if it is still there.
    pub(crate) fn position(&self, id: u64) -> Option<usize> {
        self.queue.iter().position(|item| item.id == id)
    }

    pub(crate) fn queue(&self) -> &[Item] {
        &self.queue
    }

    /// The index of the `pick`-th item ready at `now` whose device `online` accepts.
    pub(crate) fn pick_ready(
        &self,
        pick: u8,
        now: Timestamp,
        online: impl Fn(DeviceAddress) -> bool,
    ) -> Option<usize> {
        let ready: Vec<usize> = (0..self.queue.len())
            .filter(|&i| self.queue[i].ready_at <= now && online(self.queue[i].to))
            .collect();
        (!ready.is_empty()).then(|| ready[usize::from(pick) % ready.len()])
    }

    /// The `pick`-th queued item, if any.
    pub(crate) fn pick_any(&self, pick: u8) -> Option<usize> {
        (!self.queue.is_empty()).then(|| usize::from(pick) % self.queue.len())
    }

    pub(crate) fn item(&self, index: usize) -> &Item {
        &self.queue[index]
    }

    /// The device acknowledged the item: it leaves the queue and is kept for replays.
    pub(crate) fn acknowledge(&mut self, index: usize) {
        let item = self.queue.remove(index);
        self.history.push(item);
        if self.history.len() > HISTORY {
            self.history.remove(0);
        }
    }

    /// Discards an item for good.
    pub(crate) fn discard(&mut self, index: usize) -> Item {
        self.queue.remove(index)
    }

    pub(crate) fn delay(&mut self, index: usize, until: Timestamp) {
        self.queue[index].ready_at = until;
    }

    /// Queues again a copy of an item delivered before, if any.
    pub(crate) fn replay(&mut self, pick: u8, now: Timestamp) -> bool {
        if self.history.is_empty() {
            return false;
        }
        let item = self.history[usize::from(pick) % self.history.len()].clone();
        self.push(item.to, item.bytes, item.body, item.carries, now);
        true
    }

    /// Every item ready now, in queue order: the quiescence phase delivers them all.
    pub(crate) fn make_all_ready(&mut self, now: Timestamp) {
        for item in &mut self.queue {
            item.ready_at = item.ready_at.min(now);
        }
    }

    // -------------------------------------------------------------------------------------
    // Device lists
    // -------------------------------------------------------------------------------------

    pub(crate) fn publish(&mut self, account: AccountId, list: Vec<u8>) {
        self.lists.entry(account).or_default().push(list);
    }

    /// The list the relay serves for `account`: honestly (`honest`, or in honest mode) the
    /// newest; withheld, the newest when withholding began; replaying, the old ones in turn.
    pub(crate) fn fetch_list(&mut self, account: AccountId, honest: bool) -> Option<Vec<u8>> {
        let lists = self.lists.get(&account)?;
        let mode = if honest { None } else { self.modes.get(&account).copied() };
        let index = match mode {
            None | Some((ListMode::Honest, _)) => lists.len() - 1,
            Some((ListMode::Withhold, served)) => served.min(lists.len()) - 1,
            Some((ListMode::Replay, _)) => {
                self.replays_served += 1;
                self.replays_served % lists.len()
            }
        };
        lists.get(index).cloned()
    }

    /// True when the relay would serve `account`'s newest list.
    pub(crate) fn serves_newest(&self, account: AccountId) -> bool {
        match self.modes.get(&account) {
            None | Some((ListMode::Honest, _)) => true,
            Some((ListMode::Withhold, served)) => {
                *served >= self.lists.get(&account).map_or(0, Vec::len)
            }
            Some((ListMode::Replay, _)) => false,
        }
    }

    pub(crate) fn set_mode(&mut self, account: AccountId, mode: ListMode) {
        let published = self.lists.get(&account).map_or(0, Vec::len);
        self.modes.insert(account, (mode, published.max(1)));
    }

    /// Every account's lists are served honestly from now on.
    pub(crate) fn honest(&mut self) {
        self.modes.clear();
        self.stale_bundles = false;
    }

    // -------------------------------------------------------------------------------------
    // Prekeys
    // -------------------------------------------------------------------------------------

    pub(crate) fn upload(&mut self, upload: PrekeyUpload) {
        self.uploads.entry(upload.address).or_default().0.push(upload);
    }

    /// A bundle for `address`: the newest upload with a one-time prekey never handed out
    /// (none once they run out), as an honest server serves them; stale, the first upload with
    /// its first one-time prekey, which is likely used.
    pub(crate) fn bundle(&mut self, address: DeviceAddress) -> Option<PrekeyBundle> {
        let (uploads, handed) = self.uploads.get_mut(&address)?;
        if self.stale_bundles {
            return uploads.first().map(|upload| upload.bundle(Some(0)));
        }
        let upload = uploads.last()?;
        let index = upload.one_time_prekeys.iter().position(|otk| !handed.contains(&otk.id));
        if let Some(otk) = index.and_then(|i| upload.one_time_prekeys.get(i)) {
            handed.insert(otk.id);
        }
        Some(upload.bundle(index))
    }
}
