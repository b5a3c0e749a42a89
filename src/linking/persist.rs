//! Pending link attempts as store records, so an app can restart in the middle of a link.
//!
//! Each attempt type is encoded as a private record (postcard, in a buffer wiped on drop) and
//! decoded back; the public attempt types implement no serde trait of their own, so nothing but
//! a store the crate authenticated rebuilds one. A record that does not decode, or holds a
//! CPace scalar that is not canonical, is [`StoreError::Corrupt`].

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::cpace::CpaceStep;
use super::pairing::{CompanionPairing, CompanionPhase, Keys, PrimaryPairing, PrimaryPhase};
use super::pairing_code::PairingCode;
use super::qr::{QrLinkApproval, QrLinkOffer};
use super::{LinkSecret, Reference};
use crate::account::CompanionApproval;
use crate::crypto::Secret32;
use crate::device_list::LinkingMetadata;
use crate::error::StoreError;
use crate::keys::{PublicIdentity, Timestamp};
use crate::store::Table;
use crate::store::sealed::{decode, encode};

#[derive(Serialize, Deserialize)]
struct SecretRecord {
    reference: Reference,
    secret: Secret32,
}

#[derive(Serialize, Deserialize)]
struct ApprovalRecord {
    metadata: LinkingMetadata,
    account_identity: PublicIdentity,
    #[serde(with = "crate::serde_util::bytes64")]
    account_signature: [u8; 64],
}

#[derive(Serialize, Deserialize)]
struct OfferRecord {
    secret: SecretRecord,
    expires: Timestamp,
    identity: PublicIdentity,
    done: bool,
    clock: Timestamp,
}

#[derive(Serialize, Deserialize)]
struct QrApprovalRecord {
    secret: SecretRecord,
    approved: ApprovalRecord,
    companion: PublicIdentity,
    done: bool,
}

// One record per attempt, decoded once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Serialize, Deserialize)]
enum CompanionPhaseRecord {
    AwaitingResponse { scalar: Secret32, sid: Vec<u8>, own_transcript_half: Vec<u8> },
    Confirmed { secret: SecretRecord, primary: PublicIdentity },
    Finished,
}

#[derive(Serialize, Deserialize)]
struct CompanionPairingRecord {
    sid: Reference,
    code: [u8; 8],
    expires: Timestamp,
    hello: Vec<u8>,
    identity: PublicIdentity,
    phase: CompanionPhaseRecord,
    clock: Timestamp,
}

#[allow(clippy::large_enum_variant)]
#[derive(Serialize, Deserialize)]
enum PrimaryPhaseRecord {
    AwaitingConfirm {
        initiator: Secret32,
        responder: Secret32,
        link: Secret32,
        transcript: [u8; 32],
    },
    AwaitingCompanion {
        secret: SecretRecord,
        approved: ApprovalRecord,
    },
    Finished,
}

#[derive(Serialize, Deserialize)]
struct PrimaryPairingRecord {
    sid: Reference,
    companion: PublicIdentity,
    expires: Timestamp,
    phase: PrimaryPhaseRecord,
    clock: Timestamp,
}

fn secret_record(secret: &LinkSecret) -> SecretRecord {
    SecretRecord { reference: secret.reference, secret: secret.secret.clone() }
}

fn link_secret(record: SecretRecord) -> LinkSecret {
    LinkSecret { reference: record.reference, secret: record.secret }
}

fn approval_record(approval: &CompanionApproval) -> ApprovalRecord {
    ApprovalRecord {
        metadata: approval.metadata,
        account_identity: approval.account_identity.clone(),
        account_signature: approval.account_signature,
    }
}

fn approval(record: ApprovalRecord) -> CompanionApproval {
    CompanionApproval {
        metadata: record.metadata,
        account_identity: record.account_identity,
        account_signature: record.account_signature,
    }
}

fn corrupt() -> StoreError {
    StoreError::Corrupt(Table::Link)
}

impl QrLinkOffer {
    pub(crate) fn to_record(&self) -> Zeroizing<Vec<u8>> {
        encode(&OfferRecord {
            secret: secret_record(&self.secret),
            expires: self.expires,
            identity: self.identity.clone(),
            done: self.done,
            clock: self.clock,
        })
    }

    pub(crate) fn from_record(bytes: &[u8]) -> Result<Self, StoreError> {
        let record: OfferRecord = decode(Table::Link, bytes)?;
        Ok(Self {
            secret: link_secret(record.secret),
            expires: record.expires,
            identity: record.identity,
            done: record.done,
            clock: record.clock,
        })
    }
}

impl QrLinkApproval {
    pub(crate) fn to_record(&self) -> Zeroizing<Vec<u8>> {
        encode(&QrApprovalRecord {
            secret: secret_record(&self.secret),
            approved: approval_record(&self.approved),
            companion: self.companion.clone(),
            done: self.done,
        })
    }

    pub(crate) fn from_record(bytes: &[u8]) -> Result<Self, StoreError> {
        let record: QrApprovalRecord = decode(Table::Link, bytes)?;
        Ok(Self {
            secret: link_secret(record.secret),
            approved: approval(record.approved),
            companion: record.companion,
            done: record.done,
        })
    }
}

impl CompanionPairing {
    pub(crate) fn to_record(&self) -> Zeroizing<Vec<u8>> {
        let phase = match &self.phase {
            CompanionPhase::AwaitingResponse(step) => {
                let (scalar, sid, half) = step.to_parts();
                CompanionPhaseRecord::AwaitingResponse {
                    scalar: Secret32::new(*scalar),
                    sid: sid.to_vec(),
                    own_transcript_half: half.to_vec(),
                }
            }
            CompanionPhase::Confirmed { secret, primary } => CompanionPhaseRecord::Confirmed {
                secret: secret_record(secret),
                primary: primary.clone(),
            },
            CompanionPhase::Finished => CompanionPhaseRecord::Finished,
        };
        encode(&CompanionPairingRecord {
            sid: self.sid,
            code: *self.code.as_password_bytes(),
            expires: self.expires,
            hello: self.hello.clone(),
            identity: self.identity.clone(),
            phase,
            clock: self.clock,
        })
    }

    pub(crate) fn from_record(bytes: &[u8]) -> Result<Self, StoreError> {
        let record: CompanionPairingRecord = decode(Table::Link, bytes)?;
        let code = core::str::from_utf8(&record.code).map_err(|_| corrupt())?;
        let code = PairingCode::parse(code).map_err(|_| corrupt())?;
        let phase = match record.phase {
            CompanionPhaseRecord::AwaitingResponse { scalar, sid, own_transcript_half } => {
                CompanionPhase::AwaitingResponse(
                    CpaceStep::from_parts(*scalar.as_bytes(), sid, own_transcript_half)
                        .ok_or_else(corrupt)?,
                )
            }
            CompanionPhaseRecord::Confirmed { secret, primary } => {
                CompanionPhase::Confirmed { secret: link_secret(secret), primary }
            }
            CompanionPhaseRecord::Finished => CompanionPhase::Finished,
        };
        Ok(Self {
            sid: record.sid,
            code,
            expires: record.expires,
            hello: record.hello,
            identity: record.identity,
            phase,
            clock: record.clock,
        })
    }
}

impl PrimaryPairing {
    pub(crate) fn to_record(&self) -> Zeroizing<Vec<u8>> {
        let phase = match &self.phase {
            PrimaryPhase::AwaitingConfirm { keys, transcript } => {
                PrimaryPhaseRecord::AwaitingConfirm {
                    initiator: keys.initiator.clone(),
                    responder: keys.responder.clone(),
                    link: keys.link.clone(),
                    transcript: *transcript,
                }
            }
            PrimaryPhase::AwaitingCompanion { secret, approved } => {
                PrimaryPhaseRecord::AwaitingCompanion {
                    secret: secret_record(secret),
                    approved: approval_record(approved),
                }
            }
            PrimaryPhase::Finished => PrimaryPhaseRecord::Finished,
        };
        encode(&PrimaryPairingRecord {
            sid: self.sid,
            companion: self.companion.clone(),
            expires: self.expires,
            phase,
            clock: self.clock,
        })
    }

    pub(crate) fn from_record(bytes: &[u8]) -> Result<Self, StoreError> {
        let record: PrimaryPairingRecord = decode(Table::Link, bytes)?;
        let phase = match record.phase {
            PrimaryPhaseRecord::AwaitingConfirm { initiator, responder, link, transcript } => {
                PrimaryPhase::AwaitingConfirm {
                    keys: Keys { initiator, responder, link },
                    transcript,
                }
            }
            PrimaryPhaseRecord::AwaitingCompanion { secret, approved } => {
                PrimaryPhase::AwaitingCompanion {
                    secret: link_secret(secret),
                    approved: approval(approved),
                }
            }
            PrimaryPhaseRecord::Finished => PrimaryPhase::Finished,
        };
        Ok(Self {
            sid: record.sid,
            companion: record.companion,
            expires: record.expires,
            phase,
            clock: record.clock,
        })
    }
}

/// The attempt a linking message belongs to: its reference (QR) or session id (pairing), the
/// 16 bytes after the version and type of an approval, a confirmation, a pairing response or a
/// pairing key confirmation. `None` for anything shorter.
pub(crate) fn message_reference(message: &[u8]) -> Option<Reference> {
    message.get(2..18)?.try_into().ok()
}

/// The account an approval message assigns (its linking metadata's first field), read without
/// checking anything: only to know which records the step needs, never to trust.
pub(crate) fn approval_account(message: &[u8]) -> Option<crate::keys::AccountId> {
    let bytes: [u8; 8] = message.get(18..26)?.try_into().ok()?;
    Some(crate::keys::AccountId(u64::from_be_bytes(bytes)))
}
