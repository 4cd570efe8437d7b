//! Backup keys: M-of-N recovery of the root secret by administrators.
#![allow(clippy::unwrap_used)]

use kss_crypto::{
    AdminKey, AdminPublicKey, Approval, BackupKey, CryptoError, KeyserverId, RootSecret, approve,
    create_backup, recover,
};

struct Fixture {
    root: RootSecret,
    keyserver: KeyserverId,
    admins: Vec<AdminKey>,
    backup: BackupKey,
}

const NAMES: [&str; 5] = ["alice", "bob", "carol", "dave", "erin"];

fn fixture() -> Fixture {
    let root = RootSecret::generate();
    let keyserver = KeyserverId::random();
    let admins: Vec<AdminKey> = (0..5).map(|_| AdminKey::generate()).collect();
    let holders: Vec<(String, AdminPublicKey)> = NAMES
        .iter()
        .zip(&admins)
        .map(|(n, a)| (n.to_string(), a.public()))
        .collect();
    let backup = create_backup(&root, &keyserver, &holders, 3).unwrap();
    Fixture {
        root,
        keyserver,
        admins,
        backup,
    }
}

#[test]
fn any_three_of_five_recover_the_root() {
    let f = fixture();
    assert_eq!(f.backup.threshold(), 3);
    assert_eq!(f.backup.keyserver_id(), &f.keyserver);
    let approvals: Vec<Approval> = f
        .admins
        .iter()
        .map(|a| approve(&f.backup, a).unwrap())
        .collect();
    for (i, a) in approvals.iter().enumerate() {
        assert_eq!(a.index, i);
        assert_eq!(a.holder, NAMES[i]);
    }
    for i in 0..5 {
        for j in i + 1..5 {
            for k in j + 1..5 {
                let chosen = [
                    approvals[k].clone(),
                    approvals[i].clone(),
                    approvals[j].clone(),
                ];
                let root = recover(&f.backup, &chosen).unwrap();
                assert_eq!(root.expose_bytes(), f.root.expose_bytes());
            }
        }
    }
    // All five also work.
    let root = recover(&f.backup, &approvals).unwrap();
    assert_eq!(root.expose_bytes(), f.root.expose_bytes());
}

#[test]
fn two_approvals_are_not_enough() {
    let f = fixture();
    let approvals: Vec<Approval> = f.admins[..2]
        .iter()
        .map(|a| approve(&f.backup, a).unwrap())
        .collect();
    assert!(matches!(
        recover(&f.backup, &approvals),
        Err(CryptoError::NotEnoughApprovals { needed: 3, got: 2 })
    ));
    assert!(matches!(
        recover(&f.backup, &[]),
        Err(CryptoError::NotEnoughApprovals { needed: 3, got: 0 })
    ));
}

#[test]
fn forged_approval_is_rejected_naming_the_holder() {
    let f = fixture();
    // Same administrators, another backup (e.g. an older one): its approvals don't verify here.
    let holders: Vec<(String, AdminPublicKey)> = NAMES
        .iter()
        .zip(&f.admins)
        .map(|(n, a)| (n.to_string(), a.public()))
        .collect();
    let other = create_backup(&f.root, &f.keyserver, &holders, 3).unwrap();
    let mut approvals = vec![
        approve(&f.backup, &f.admins[0]).unwrap(),
        approve(&f.backup, &f.admins[1]).unwrap(),
    ];
    approvals.push(approve(&other, &f.admins[3]).unwrap());
    let err = recover(&f.backup, &approvals).err().unwrap();
    assert_eq!(
        err,
        CryptoError::ApprovalRejected {
            holder: "dave".into(),
            index: 3
        }
    );
    assert!(err.to_string().contains("dave"));

    // A share copied from another holder's approval, relabelled, is rejected too.
    let mut relabelled = approve(&f.backup, &f.admins[0]).unwrap();
    relabelled.index = 2;
    relabelled.holder = "carol".into();
    let approvals = vec![
        relabelled,
        approve(&f.backup, &f.admins[0]).unwrap(),
        approve(&f.backup, &f.admins[1]).unwrap(),
    ];
    assert_eq!(
        recover(&f.backup, &approvals).err(),
        Some(CryptoError::ApprovalRejected {
            holder: "carol".into(),
            index: 2
        })
    );
}

#[test]
fn duplicate_and_mislabelled_approvals_are_rejected() {
    let f = fixture();
    let a0 = approve(&f.backup, &f.admins[0]).unwrap();
    let a1 = approve(&f.backup, &f.admins[1]).unwrap();
    assert_eq!(
        recover(&f.backup, &[a0.clone(), a1.clone(), a0.clone()]).err(),
        Some(CryptoError::DuplicateApproval)
    );
    let mut wrong_name = a1.clone();
    wrong_name.holder = "mallory".into();
    assert!(matches!(
        recover(&f.backup, &[a0.clone(), wrong_name]),
        Err(CryptoError::Malformed(_))
    ));
    let mut unknown = a1;
    unknown.index = 9;
    assert!(matches!(
        recover(&f.backup, &[a0, unknown]),
        Err(CryptoError::UnknownHolder(_))
    ));
    // A stranger cannot approve.
    assert!(matches!(
        approve(&f.backup, &AdminKey::generate()),
        Err(CryptoError::UnknownHolder(_))
    ));
}

#[test]
fn json_round_trips() {
    let f = fixture();
    let json = f.backup.to_json();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["format"], "kss-backup-key/v1");
    assert_eq!(value["keyserver_id"], f.keyserver.to_string());
    assert_eq!(value["threshold"], 3);
    assert_eq!(value["holders"].as_array().unwrap().len(), 5);
    assert_eq!(value["holders"][1]["name"], "bob");
    assert_eq!(value["holders"][1]["index"], 1);
    assert_eq!(
        value["holders"][1]["admin_public_key"],
        f.admins[1].public().to_hex()
    );
    let parsed = BackupKey::from_json(&json).unwrap();
    assert_eq!(parsed, f.backup);

    let approvals: Vec<Approval> = f.admins[2..]
        .iter()
        .map(|a| {
            let json = approve(&parsed, a).unwrap().to_json();
            assert!(json.contains("kss-backup-approval/v1"));
            Approval::from_json(&json).unwrap()
        })
        .collect();
    let root = recover(&parsed, &approvals).unwrap();
    assert_eq!(root.expose_bytes(), f.root.expose_bytes());

    // Keys round-trip through their file formats.
    let admin = &f.admins[0];
    let again = AdminKey::from_hex(&admin.to_hex()).unwrap();
    assert_eq!(again.public(), admin.public());
    let again = AdminKey::from_bytes(&*admin.to_bytes()).unwrap();
    assert_eq!(again.public(), admin.public());
    let pk: AdminPublicKey = admin.public().to_string().parse().unwrap();
    assert_eq!(pk, admin.public());
    assert_eq!(format!("{admin:?}"), "AdminKey(<redacted>)");
}

fn edited(json: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut value: serde_json::Value = serde_json::from_str(json).unwrap();
    edit(&mut value);
    value.to_string()
}

#[test]
fn json_errors_name_the_field() {
    let f = fixture();
    let json = f.backup.to_json();
    type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "format",
            Box::new(|v| v["format"] = "kss-backup-key/v0".into()),
        ),
        (
            "keyserver_id",
            Box::new(|v| v["keyserver_id"] = "xyz".into()),
        ),
        ("threshold", Box::new(|v| v["threshold"] = 6.into())),
        ("threshold", Box::new(|v| v["threshold"] = 0.into())),
        ("public_key_set", Box::new(|v| v["threshold"] = 2.into())),
        (
            "public_key_set",
            Box::new(|v| v["public_key_set"] = "zz".into()),
        ),
        (
            "root_ciphertext",
            Box::new(|v| {
                let mut s = v["root_ciphertext"].as_str().unwrap().to_owned();
                let last = if s.ends_with('0') { "1" } else { "0" };
                s.replace_range(s.len() - 1.., last);
                v["root_ciphertext"] = s.into();
            }),
        ),
        (
            "holders[2].admin_public_key",
            Box::new(|v| v["holders"][2]["admin_public_key"] = "00".into()),
        ),
        (
            "holders[4].encrypted_share",
            Box::new(|v| v["holders"][4]["encrypted_share"] = "0011".into()),
        ),
        (
            "holders[1].index",
            Box::new(|v| v["holders"][1]["index"] = 0.into()),
        ),
        (
            "holders",
            Box::new(|v| v["holders"][1]["name"] = "alice".into()),
        ),
    ];
    for (field, edit) in cases {
        let bad = edited(&json, edit);
        let err = BackupKey::from_json(&bad).unwrap_err();
        assert!(
            matches!(&err, CryptoError::Malformed(m) if m.contains(field)),
            "{field}: {err}"
        );
    }
    assert!(BackupKey::from_json("{").is_err());
    assert!(Approval::from_json(r#"{"format":"x","index":0,"holder":"a","share":"00"}"#).is_err());
}

#[test]
fn keyserver_mismatch_is_detected() {
    let f = fixture();
    let other = KeyserverId::random();
    let json = edited(&f.backup.to_json(), |v| {
        v["keyserver_id"] = other.to_string().into()
    });
    let tampered = BackupKey::from_json(&json).unwrap();
    assert_eq!(tampered.keyserver_id(), &other);
    let approvals: Vec<Approval> = f.admins[..3]
        .iter()
        .map(|a| approve(&tampered, a).unwrap())
        .collect();
    assert_eq!(
        recover(&tampered, &approvals).err(),
        Some(CryptoError::WrongKeyserver)
    );
}

#[test]
fn creation_refuses_bad_parameters() {
    let root = RootSecret::generate();
    let ks = KeyserverId::random();
    let a = AdminKey::generate().public();
    let b = AdminKey::generate().public();
    let holders = vec![("a".to_string(), a), ("b".to_string(), b)];
    assert!(matches!(
        create_backup(&root, &ks, &holders, 0),
        Err(CryptoError::BadThreshold { .. })
    ));
    assert!(matches!(
        create_backup(&root, &ks, &holders, 3),
        Err(CryptoError::BadThreshold { .. })
    ));
    assert!(matches!(
        create_backup(&root, &ks, &[], 1),
        Err(CryptoError::BadThreshold { .. })
    ));
    let dup_key = vec![("a".to_string(), a), ("b".to_string(), a)];
    assert!(matches!(
        create_backup(&root, &ks, &dup_key, 1),
        Err(CryptoError::Malformed(_))
    ));
    let dup_name = vec![("a".to_string(), a), ("a".to_string(), b)];
    assert!(matches!(
        create_backup(&root, &ks, &dup_name, 1),
        Err(CryptoError::Malformed(_))
    ));
    // 1-of-1 and 2-of-2 work.
    let admin = AdminKey::generate();
    let one = create_backup(&root, &ks, &[("solo".into(), admin.public())], 1).unwrap();
    let recovered = recover(&one, &[approve(&one, &admin).unwrap()]).unwrap();
    assert_eq!(recovered.expose_bytes(), root.expose_bytes());
    assert!(AdminPublicKey::from_hex("00").is_err());
    let mut identity = [0u8; 48];
    identity[0] = 0xc0;
    assert!(AdminPublicKey::from_bytes(&identity).is_err());
    assert!(AdminKey::from_bytes(&[0xff; 32]).is_err());
}
