//! Known-answer tests for the `CPACE-RISTR255-SHA512` suite against the
//! draft-irtf-cfrg-cpace test vectors (`tests/vectors/cpace/`).

#[cfg(test)]
mod vectors {
    use multidevice::hazmat::cpace::{
        CpaceError, CpaceStep, decode_share, generator, hazmat_scalar_mult_vfy,
    };
    use serde_json::Value;

    const VECTORS: &str = include_str!("vectors/cpace/testvectors.json");

    fn suite(name: &str) -> Value {
        let all: Value = serde_json::from_str(VECTORS).expect("vector file is JSON");
        all.get(name).unwrap_or_else(|| panic!("missing entry {name}")).clone()
    }

    fn bytes(entry: &Value, field: &str) -> Vec<u8> {
        let text = entry
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("missing field {field}"));
        assert_eq!(text.len() % 2, 0, "{field} has odd hex length");
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn array32(entry: &Value, field: &str) -> [u8; 32] {
        bytes(entry, field).try_into().expect("32 bytes")
    }

    struct Inputs {
        prs: Vec<u8>,
        ci: Vec<u8>,
        sid: Vec<u8>,
        ya: [u8; 32],
        yb: [u8; 32],
        ad_a: Vec<u8>,
        ad_b: Vec<u8>,
    }

    fn inputs(tv: &Value) -> Inputs {
        Inputs {
            prs: bytes(tv, "PRS"),
            ci: bytes(tv, "CI"),
            sid: bytes(tv, "sid"),
            ya: array32(tv, "ya"),
            yb: array32(tv, "yb"),
            ad_a: bytes(tv, "ADa"),
            ad_b: bytes(tv, "ADb"),
        }
    }

    fn start_a(i: &Inputs) -> (CpaceStep, [u8; 32]) {
        CpaceStep::hazmat_start_with_scalar(i.ya, &i.prs, &i.ci, &i.sid, &i.ad_a).unwrap()
    }

    fn start_b(i: &Inputs) -> (CpaceStep, [u8; 32]) {
        CpaceStep::hazmat_start_with_scalar(i.yb, &i.prs, &i.ci, &i.sid, &i.ad_b).unwrap()
    }

    #[test]
    fn inputs_are_the_documented_ones() {
        let i = inputs(&suite("G_Coffee25519"));
        assert_eq!(i.prs, b"Password");
        assert_eq!(i.ci, b"\x0bA_initiator\x0bB_responder");
        assert_eq!(i.ad_a, b"ADa");
        assert_eq!(i.ad_b, b"ADb");
    }

    #[test]
    fn generator_matches() {
        let tv = suite("G_Coffee25519");
        let i = inputs(&tv);
        let g = generator(&i.prs, &i.ci, &i.sid);
        assert_eq!(g.compress().to_bytes().to_vec(), bytes(&tv, "g"));
    }

    #[test]
    fn shares_match() {
        let tv = suite("G_Coffee25519");
        let i = inputs(&tv);
        assert_eq!(start_a(&i).1.to_vec(), bytes(&tv, "Ya"));
        assert_eq!(start_b(&i).1.to_vec(), bytes(&tv, "Yb"));
    }

    #[test]
    fn shared_point_k_matches_from_both_sides() {
        let tv = suite("G_Coffee25519");
        let i = inputs(&tv);
        let k = bytes(&tv, "K");
        let ka = hazmat_scalar_mult_vfy(i.ya, &bytes(&tv, "Yb")).unwrap();
        let kb = hazmat_scalar_mult_vfy(i.yb, &bytes(&tv, "Ya")).unwrap();
        assert_eq!(ka.to_vec(), k);
        assert_eq!(kb.to_vec(), k);
    }

    #[test]
    fn isk_initiator_responder_matches() {
        let tv = suite("G_Coffee25519");
        let i = inputs(&tv);
        let expected = bytes(&tv, "ISK_IR");
        let (a, ya) = start_a(&i);
        let (b, yb) = start_b(&i);
        let isk_a = a.finish_initiator(&yb, &i.ad_b).unwrap();
        let isk_b = b.finish_responder(&ya, &i.ad_a).unwrap();
        assert_eq!(isk_a.as_bytes().to_vec(), expected);
        assert_eq!(isk_b.as_bytes().to_vec(), expected);
    }

    #[test]
    fn isk_symmetric_matches() {
        let tv = suite("G_Coffee25519");
        let i = inputs(&tv);
        let expected = bytes(&tv, "ISK_SY");
        let (a, ya) = start_a(&i);
        let (b, yb) = start_b(&i);
        let isk_a = a.finish_symmetric(&yb, &i.ad_b).unwrap();
        let isk_b = b.finish_symmetric(&ya, &i.ad_a).unwrap();
        assert_eq!(isk_a.as_bytes().to_vec(), expected);
        assert_eq!(isk_b.as_bytes().to_vec(), expected);
    }

    #[test]
    fn valid_point_decodes_and_multiplies() {
        let points = suite("G_Coffee25519_points");
        let valid = points.get("Valid").expect("Valid entry");
        let x = bytes(valid, "X");
        decode_share(&x).expect("valid encoding decodes");
        let product = hazmat_scalar_mult_vfy(array32(valid, "s"), &x).unwrap();
        assert_eq!(product.to_vec(), bytes(valid, "G.scalar_mult(s,decode(X))"));
        assert_eq!(product.to_vec(), bytes(valid, "G.scalar_mult_vfy(s,X)"));
    }

    #[test]
    fn invalid_points_are_rejected() {
        let points = suite("G_Coffee25519_points");
        let invalid_encoding = bytes(&points, "Invalid Y1");
        let identity = bytes(&points, "Invalid Y2");
        assert_eq!(decode_share(&invalid_encoding).unwrap_err(), CpaceError::InvalidShare);
        assert_eq!(decode_share(&identity).unwrap_err(), CpaceError::IdentityShare);

        let tv = suite("G_Coffee25519");
        let i = inputs(&tv);
        for (bad, expected) in
            [(invalid_encoding, CpaceError::InvalidShare), (identity, CpaceError::IdentityShare)]
        {
            assert_eq!(hazmat_scalar_mult_vfy(i.ya, &bad).unwrap_err(), expected);
            let (a, _) = start_a(&i);
            assert_eq!(a.finish_initiator(&bad, &i.ad_b).unwrap_err(), expected);
            let (b, _) = start_b(&i);
            assert_eq!(b.finish_responder(&bad, &i.ad_a).unwrap_err(), expected);
            let (b, _) = start_b(&i);
            assert_eq!(b.finish_symmetric(&bad, &i.ad_a).unwrap_err(), expected);
        }
    }

    #[test]
    fn every_invalid_entry_is_covered() {
        let points = suite("G_Coffee25519_points");
        let keys: Vec<&String> = points.as_object().expect("object").keys().collect();
        assert_eq!(keys.len(), 3, "unexpected entries: {keys:?}");
    }
}
