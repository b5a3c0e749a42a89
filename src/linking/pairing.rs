//! The pairing-code flow: an 8-character code shown on the companion and typed on the primary,
//! run through CPace (ristretto255, SHA-512) so a relay that records every byte still cannot test
//! guesses offline.
//!
//! ```text
//! companion -> primary   hello    = 0x01 0x43 || sid (16) || Ya (32) || companion identity (128)
//! primary   -> companion response = 0x01 0x44 || sid || Yb (32) || primary identity (128) || confirm_b (32)
//! companion -> primary   confirm  = 0x01 0x45 || sid || confirm_a (32)
//! then the approval and confirmation of the QR flow, MAC'ed under the derived link secret.
//! ```
//!
//! CPace inputs: PRS = the code's 8 canonical characters, CI = `"multidevice/v1/cpace/pairing"`,
//! sid = 16 random bytes from the companion, ADa = companion identity, ADb = primary identity.
//! `ka || kb || link secret = HKDF(salt = sid, ikm = ISK, info = "multidevice/v1/kdf/pairing")`;
//! `confirm_x = HMAC(kx, label_x || 0x00 || H("multidevice/v1/hash/pairing-transcript",
//! hello || response without confirm_b))`. A failed confirmation aborts the attempt on that side.

use rand_core::CryptoRng;
use zeroize::Zeroizing;

use super::cpace::{CpaceError, CpaceStep};
use super::pairing_code::PairingCode;
use super::{LinkSecret, Reference};
use crate::account::CompanionApproval;
use crate::consts::PAIRING_CODE_LIFETIME_SECS;
use crate::crypto::{self, Secret32, label};
use crate::device::Device;
use crate::device_list::SignedDeviceList;
use crate::error::{DecodeError, LinkError};
use crate::keys::{PublicIdentity, Timestamp};
use crate::wire::{Codec, Reader};

pub(super) struct Keys {
    pub(super) initiator: Secret32,
    pub(super) responder: Secret32,
    pub(super) link: Secret32,
}

fn derive(isk: &[u8; 64], sid: &Reference) -> Keys {
    let mut okm = Zeroizing::new([[0u8; 32]; 3]);
    crypto::hkdf(sid, isk, &[label::KDF_PAIRING], okm.as_flattened_mut());
    let [initiator, responder, link] = &*okm;
    Keys {
        initiator: Secret32::new(*initiator),
        responder: Secret32::new(*responder),
        link: Secret32::new(*link),
    }
}

/// The companion's hello: `0x01 || 0x43 || sid (16) || Ya (32) || companion PublicIdentity`.
struct Hello {
    sid: Reference,
    share: [u8; 32],
    identity: PublicIdentity,
}

impl Codec<'_> for Hello {
    const TYPE: u8 = 0x43;
    const MIN_BODY_LEN: usize = 16 + 32 + PublicIdentity::LEN;

    fn body_len(&self) -> usize {
        Self::MIN_BODY_LEN
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.sid);
        out.extend_from_slice(&self.share);
        out.extend_from_slice(&self.identity.to_bytes());
    }

    fn read_body(_: u8, reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            sid: reader.array()?,
            share: reader.array()?,
            identity: PublicIdentity::read(reader)?,
        })
    }
}

/// The primary's response: `0x01 || 0x44 || sid (16) || Yb (32) || primary PublicIdentity
/// || confirm_b (32)`; the transcript covers every byte but `confirm_b`.
struct Response {
    sid: Reference,
    share: [u8; 32],
    identity: PublicIdentity,
    confirm_b: [u8; 32],
}

impl Codec<'_> for Response {
    const TYPE: u8 = 0x44;
    const MIN_BODY_LEN: usize = 16 + 32 + PublicIdentity::LEN + 32;

    fn body_len(&self) -> usize {
        Self::MIN_BODY_LEN
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.sid);
        out.extend_from_slice(&self.share);
        out.extend_from_slice(&self.identity.to_bytes());
        out.extend_from_slice(&self.confirm_b);
    }

    fn read_body(_: u8, reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            sid: reader.array()?,
            share: reader.array()?,
            identity: PublicIdentity::read(reader)?,
            confirm_b: reader.array()?,
        })
    }
}

/// The companion's key confirmation: `0x01 || 0x45 || sid (16) || confirm_a (32)`.
struct Confirm {
    sid: Reference,
    confirm_a: [u8; 32],
}

impl Codec<'_> for Confirm {
    const TYPE: u8 = 0x45;
    const MIN_BODY_LEN: usize = 16 + 32;

    fn body_len(&self) -> usize {
        Self::MIN_BODY_LEN
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.sid);
        out.extend_from_slice(&self.confirm_a);
    }

    fn read_body(_: u8, reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self { sid: reader.array()?, confirm_a: reader.array()? })
    }
}

fn transcript(hello: &[u8], response: &[u8]) -> [u8; 32] {
    crypto::hash(label::HASH_PAIRING_TRANSCRIPT, &[hello, response])
}

fn share_error(_: CpaceError) -> LinkError {
    LinkError::InvalidShare
}

// One value per linking attempt: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum CompanionPhase {
    AwaitingResponse(CpaceStep),
    Confirmed { secret: LinkSecret, primary: PublicIdentity },
    Finished,
}

/// Companion side of a pairing-code link.
pub struct CompanionPairing {
    pub(super) sid: Reference,
    pub(super) code: PairingCode,
    pub(super) expires: Timestamp,
    pub(super) hello: Vec<u8>,
    pub(super) identity: PublicIdentity,
    pub(super) phase: CompanionPhase,
    /// The highest time this attempt was used at.
    pub(super) clock: Timestamp,
}

impl core::fmt::Debug for CompanionPairing {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CompanionPairing").field("expires", &self.expires).finish_non_exhaustive()
    }
}

impl CompanionPairing {
    /// Starts an attempt: a fresh code to display (valid for 180 s from the companion's clock
    /// high-water mark, which `now` raises first) and the hello to send.
    pub fn start(
        rng: &mut (impl CryptoRng + ?Sized),
        companion: &mut Device,
        now: Timestamp,
    ) -> (Self, Vec<u8>) {
        companion.observe(now);
        let now = companion.clock();
        let code = PairingCode::generate(rng);
        let mut sid = [0u8; 16];
        rng.fill_bytes(&mut sid);
        let identity = companion.public_identity().clone();
        let identity_bytes = identity.to_bytes();
        let (step, share) = CpaceStep::start(
            rng,
            code.as_password_bytes(),
            label::CPACE_CHANNEL,
            &sid,
            &identity_bytes,
        );
        let hello = Hello { sid, share, identity: identity.clone() }.encode();
        let pairing = Self {
            sid,
            code,
            expires: now.plus_secs(PAIRING_CODE_LIFETIME_SECS),
            hello: hello.clone(),
            identity,
            phase: CompanionPhase::AwaitingResponse(step),
            clock: now,
        };
        (pairing, hello)
    }

    /// The code to show the user.
    pub fn code(&self) -> &PairingCode {
        &self.code
    }

    /// When the code stops working.
    pub fn expires(&self) -> Timestamp {
        self.expires
    }

    /// Handles the primary's response: finishes CPace and checks the primary's key
    /// confirmation. A malformed response changes nothing; a failed confirmation (wrong code, or
    /// a relay in the middle) aborts the attempt. Returns the companion's confirmation.
    pub fn handle_response(
        &mut self,
        response: &[u8],
        now: Timestamp,
    ) -> Result<Vec<u8>, LinkError> {
        self.clock = self.clock.max(now);
        let now = self.clock;
        if !matches!(self.phase, CompanionPhase::AwaitingResponse(_)) {
            return Err(LinkError::NotActive);
        }
        if now > self.expires {
            self.phase = CompanionPhase::Finished;
            return Err(LinkError::Expired);
        }
        let Response { sid, share, identity: primary, confirm_b } = Response::decode(response)?;
        if sid != self.sid {
            return Err(LinkError::WrongAttempt);
        }
        let CompanionPhase::AwaitingResponse(step) =
            core::mem::replace(&mut self.phase, CompanionPhase::Finished)
        else {
            return Err(LinkError::NotActive);
        };
        // From here on every failure leaves the attempt aborted.
        let isk = step.finish_initiator(&share, &primary.to_bytes()).map_err(share_error)?;
        let keys = derive(isk.as_bytes(), &self.sid);
        let (signed_part, _) = response.split_last_chunk::<32>().ok_or(LinkError::NotActive)?;
        let th = transcript(&self.hello, signed_part);
        let expected =
            crypto::mac(keys.responder.as_bytes(), label::MAC_PAIRING_CONFIRM_RESPONDER, &[&th]);
        if !crypto::ct_eq(&expected, &confirm_b) {
            return Err(LinkError::ConfirmationFailed);
        }
        let confirm_a =
            crypto::mac(keys.initiator.as_bytes(), label::MAC_PAIRING_CONFIRM_INITIATOR, &[&th]);
        let out = Confirm { sid: self.sid, confirm_a }.encode();
        self.phase = CompanionPhase::Confirmed {
            secret: LinkSecret { reference: self.sid, secret: keys.link },
            primary,
        };
        Ok(out)
    }

    /// Handles the primary's approval (MAC'ed under the PAKE-derived link secret), countersigns
    /// and links this device. Returns the confirmation for the primary.
    pub fn accept_approval(
        &mut self,
        companion: &mut Device,
        approval: &[u8],
        now: Timestamp,
    ) -> Result<Vec<u8>, LinkError> {
        let now = super::step_time(&mut self.clock, companion, now);
        let CompanionPhase::Confirmed { secret, primary } = &self.phase else {
            return Err(LinkError::NotActive);
        };
        if now > self.expires {
            return Err(LinkError::Expired);
        }
        if companion.public_identity() != &self.identity {
            return Err(LinkError::WrongAttempt);
        }
        let confirmation = super::accept_approval(companion, secret, Some(primary), approval)?;
        self.phase = CompanionPhase::Finished;
        Ok(confirmation)
    }
}

// One value per linking attempt: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum PrimaryPhase {
    AwaitingConfirm { keys: Keys, transcript: [u8; 32] },
    AwaitingCompanion { secret: LinkSecret, approved: CompanionApproval },
    Finished,
}

/// Primary side of a pairing-code link.
pub struct PrimaryPairing {
    pub(super) sid: Reference,
    pub(super) companion: PublicIdentity,
    pub(super) expires: Timestamp,
    pub(super) phase: PrimaryPhase,
    /// The highest time this attempt was used at.
    pub(super) clock: Timestamp,
}

impl core::fmt::Debug for PrimaryPairing {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PrimaryPairing").field("expires", &self.expires).finish_non_exhaustive()
    }
}

impl PrimaryPairing {
    /// Handles a companion's hello with the code the user typed. Returns the response, which
    /// carries the primary's key confirmation.
    ///
    /// Takes the code by value: one typed code answers at most one hello, so a relay that
    /// injects several hellos gets no extra guesses at it. A code cannot be copied:
    ///
    /// ```compile_fail
    /// # use multidevice::{PairingCode, PrimaryPairing};
    /// # fn twice(rng: &mut rand::rngs::StdRng, primary: &mut multidevice::Device,
    /// #     a: &[u8], b: &[u8], code: PairingCode, now: multidevice::Timestamp) {
    /// let first = PrimaryPairing::respond(rng, primary, a, code, now);
    /// let second = PrimaryPairing::respond(rng, primary, b, code, now); // `code` was moved
    /// # }
    /// ```
    pub fn respond(
        rng: &mut (impl CryptoRng + ?Sized),
        primary: &mut Device,
        hello: &[u8],
        code: PairingCode,
        now: Timestamp,
    ) -> Result<(Self, Vec<u8>), LinkError> {
        primary.observe(now);
        let now = primary.clock();
        let Hello { sid, share, identity: companion } = Hello::decode(hello)?;
        // A refused hello (malformed above, or a bad share below) spends no code; one that
        // gets an answer spends it for good, whether or not the attempt then succeeds.
        let own = primary.public_identity().to_bytes();
        let (step, own_share) =
            CpaceStep::start(rng, code.as_password_bytes(), label::CPACE_CHANNEL, &sid, &own);
        let isk = step.finish_responder(&share, &companion.to_bytes()).map_err(share_error)?;
        primary.answer_pairing_code(code.as_password_bytes())?;
        let keys = derive(isk.as_bytes(), &sid);
        let mut response = Response {
            sid,
            share: own_share,
            identity: primary.public_identity().clone(),
            confirm_b: [0u8; 32],
        }
        .encode();
        // The transcript covers the response up to `confirm_b`, which is then filled in.
        let Some((signed_part, confirm_b)) = response.split_last_chunk_mut::<32>() else {
            return Err(LinkError::NotActive);
        };
        let th = transcript(hello, signed_part);
        *confirm_b =
            crypto::mac(keys.responder.as_bytes(), label::MAC_PAIRING_CONFIRM_RESPONDER, &[&th]);
        let pairing = Self {
            sid,
            companion,
            expires: now.plus_secs(PAIRING_CODE_LIFETIME_SECS),
            phase: PrimaryPhase::AwaitingConfirm { keys, transcript: th },
            clock: now,
        };
        drop(code);
        Ok((pairing, response))
    }

    /// Checks the companion's key confirmation; on success approves the companion and returns
    /// the MAC'ed approval. A failed confirmation aborts the attempt. A fifth companion is
    /// refused before anything is signed.
    pub fn handle_confirm(
        &mut self,
        primary: &mut Device,
        confirm: &[u8],
        now: Timestamp,
    ) -> Result<Vec<u8>, LinkError> {
        let now = super::step_time(&mut self.clock, primary, now);
        let PrimaryPhase::AwaitingConfirm { keys, transcript } = &self.phase else {
            return Err(LinkError::NotActive);
        };
        if now > self.expires {
            self.phase = PrimaryPhase::Finished;
            return Err(LinkError::Expired);
        }
        let Confirm { sid, confirm_a } = Confirm::decode(confirm)?;
        if sid != self.sid {
            return Err(LinkError::WrongAttempt);
        }
        let expected = crypto::mac(
            keys.initiator.as_bytes(),
            label::MAC_PAIRING_CONFIRM_INITIATOR,
            &[transcript],
        );
        if !crypto::ct_eq(&expected, &confirm_a) {
            self.phase = PrimaryPhase::Finished;
            return Err(LinkError::ConfirmationFailed);
        }
        let secret = LinkSecret { reference: self.sid, secret: keys.link.clone() };
        let (approved, message) = super::approve(primary, &secret, &self.companion, now)?;
        self.phase = PrimaryPhase::AwaitingCompanion { secret, approved };
        Ok(message)
    }

    /// Verifies the companion's countersignature and adds it. Returns the new device list.
    pub fn finish(
        &mut self,
        primary: &mut Device,
        confirmation: &[u8],
        now: Timestamp,
    ) -> Result<SignedDeviceList, LinkError> {
        let now = super::step_time(&mut self.clock, primary, now);
        let PrimaryPhase::AwaitingCompanion { secret, approved } = &self.phase else {
            return Err(LinkError::NotActive);
        };
        let list = super::finish(primary, secret, approved, &self.companion, confirmation, now)?;
        self.phase = PrimaryPhase::Finished;
        Ok(list)
    }
}
