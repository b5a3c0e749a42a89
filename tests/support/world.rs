//! Accounts of devices and a hostile server that keeps every device list and prekey upload it
//! ever saw, and serves whichever it likes.
#![allow(dead_code)]

use std::collections::BTreeMap;

use multidevice::{
    AccountId, Device, DeviceAddress, DeviceId, FanoutMessage, PrekeyBundle, PrekeyUpload,
    QrLinkApproval, QrLinkOffer, ReceiveError, Received, SignedDeviceList, Timestamp,
};
use rand::rngs::StdRng;

/// The untrusted server: it stores everything and chooses what to hand out.
#[derive(Default)]
pub(crate) struct Server {
    /// Every list published, per account, oldest first.
    lists: BTreeMap<AccountId, Vec<Vec<u8>>>,
    /// Every prekey upload made, per device, oldest first.
    uploads: BTreeMap<DeviceAddress, Vec<PrekeyUpload>>,
    /// One-time prekeys handed out from each device's newest upload.
    handed_out: BTreeMap<DeviceAddress, usize>,
}

impl Server {
    /// Stores a list a primary published.
    pub(crate) fn publish(&mut self, list: &SignedDeviceList) {
        self.lists.entry(list.account()).or_default().push(list.to_bytes());
    }

    /// Stores `primary`'s own newest list.
    pub(crate) fn publish_own(&mut self, primary: &Device) {
        let bytes = primary.device_list(primary.account()).unwrap().signed_bytes().to_vec();
        self.lists.entry(primary.account()).or_default().push(bytes);
    }

    /// The newest list published for `account`.
    pub(crate) fn newest(&self, account: AccountId) -> Vec<u8> {
        self.lists[&account].last().unwrap().clone()
    }

    /// Every list published for `account`, oldest first: what a malicious server can replay.
    pub(crate) fn every_list(&self, account: AccountId) -> Vec<Vec<u8>> {
        self.lists.get(&account).cloned().unwrap_or_default()
    }

    /// Stores `device`'s current prekey upload.
    pub(crate) fn upload(&mut self, device: &Device) {
        self.uploads.entry(device.address()).or_default().push(device.prekey_upload());
        self.handed_out.insert(device.address(), 0);
    }

    /// A bundle from the newest upload of `address`, with the next one-time prekey not handed
    /// out yet (none once they run out), as an honest server serves them.
    pub(crate) fn bundle(&mut self, address: DeviceAddress) -> PrekeyBundle {
        let handed = self.handed_out.entry(address).or_default();
        let upload = self.uploads[&address].last().unwrap();
        let index = (*handed < upload.one_time_prekeys.len()).then_some(*handed);
        *handed += 1;
        upload.bundle(index)
    }

    /// A bundle of any upload `address` ever made, with any one-time prekey of it: what a
    /// malicious server can hand out.
    pub(crate) fn old_bundle(
        &self,
        address: DeviceAddress,
        upload: usize,
        otk: Option<usize>,
    ) -> PrekeyBundle {
        self.uploads[&address][upload].bundle(otk)
    }

    /// Bundles for every device that ever uploaded to `accounts`.
    pub(crate) fn bundles(&mut self, accounts: &[AccountId]) -> Vec<PrekeyBundle> {
        let addresses: Vec<DeviceAddress> = self
            .uploads
            .keys()
            .filter(|address| accounts.contains(&address.account))
            .copied()
            .collect();
        addresses.into_iter().map(|address| self.bundle(address)).collect()
    }
}

/// An account's devices, primary first.
pub(crate) struct Account {
    pub(crate) devices: Vec<Device>,
}

impl Account {
    pub(crate) fn id(&self) -> AccountId {
        self.devices[0].account()
    }

    pub(crate) fn primary(&mut self) -> &mut Device {
        &mut self.devices[0]
    }

    /// The device at `address`.
    pub(crate) fn device(&mut self, address: DeviceAddress) -> &mut Device {
        self.devices.iter_mut().find(|d| d.address() == address).unwrap()
    }
}

/// A fresh device with `otks` one-time prekeys, uploaded.
pub(crate) fn device_on(
    rng: &mut StdRng,
    server: &mut Server,
    address: DeviceAddress,
    now: Timestamp,
) -> Device {
    let mut device = Device::new(rng, address, now);
    device.generate_one_time_prekeys(rng, 20).unwrap();
    server.upload(&device);
    device
}

/// An account with a primary and `companions` companions linked by QR, every list published and
/// processed by every device of the account, every device's prekeys uploaded.
pub(crate) fn account(
    rng: &mut StdRng,
    server: &mut Server,
    id: u64,
    companions: usize,
    now: Timestamp,
) -> Account {
    let primary = device_on(rng, server, DeviceAddress::new(AccountId(id), DeviceId(0)), now);
    server.publish_own(&primary);
    let mut account = Account { devices: vec![primary] };
    for _ in 0..companions {
        link(rng, server, &mut account, now);
    }
    account
}

/// Links a new companion to `account` by QR; every device of the account processes the new
/// list. Returns the companion's address.
pub(crate) fn link(
    rng: &mut StdRng,
    server: &mut Server,
    account: &mut Account,
    now: Timestamp,
) -> DeviceAddress {
    let mut companion = Device::new(rng, DeviceAddress::new(account.id(), DeviceId(99)), now);
    let mut offer = QrLinkOffer::new(rng, &mut companion, now);
    let (mut approval, message) =
        QrLinkApproval::approve(account.primary(), &offer.qr_text(), now).unwrap();
    let confirmation = offer.accept_approval(&mut companion, &message, now).unwrap();
    let list = approval.finish(account.primary(), &confirmation, now).unwrap();
    server.publish(&list);
    companion.generate_one_time_prekeys(rng, 20).unwrap();
    account.devices.push(companion);
    for device in &mut account.devices {
        device.process_device_list(&list.to_bytes(), now).unwrap();
    }
    let address = account.devices.last().unwrap().address();
    server.upload(account.devices.last().unwrap());
    address
}

/// Every device of `accounts` processes the newest list of every one of `accounts`.
pub(crate) fn introduce(server: &Server, accounts: &mut [&mut Account], now: Timestamp) {
    let lists: Vec<Vec<u8>> = accounts.iter().map(|a| server.newest(a.id())).collect();
    for account in accounts.iter_mut() {
        for device in &mut account.devices {
            for list in &lists {
                device.process_device_list(list, now).unwrap();
            }
        }
    }
}

/// The envelope of `fanout` for `address`, if any.
pub(crate) fn envelope_for(fanout: &FanoutMessage, address: DeviceAddress) -> Option<Vec<u8>> {
    fanout.envelopes.iter().find(|e| e.recipient == address).map(|e| e.bytes.clone())
}

/// The addresses a fan-out reached.
pub(crate) fn recipients(fanout: &FanoutMessage) -> Vec<DeviceAddress> {
    fanout.envelopes.iter().map(|e| e.recipient).collect()
}

/// Receives `bytes` as a message and returns its payload.
pub(crate) fn read(
    device: &mut Device,
    bytes: &[u8],
    now: Timestamp,
) -> Result<Vec<u8>, ReceiveError> {
    match device.receive(bytes, None, now)? {
        Received::Message(message) => Ok(message.payload.to_vec()),
        other => panic!("expected a message, got {other:?}"),
    }
}
