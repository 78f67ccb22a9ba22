import Foundation
import Security

/// The store's 32-byte master key, kept in this device's Keychain.
///
/// `kSecAttrAccessibleAfterFirstUnlockThisDeviceOnly`: readable by background
/// work once the device was unlocked after boot; never synced to iCloud
/// Keychain nor restored onto another device, so a backup of the store moved to
/// another phone cannot be opened there. Keychain items outlive an app's
/// uninstall while its files do not: a reinstalled app finds the old key and a
/// fresh store, which is fine. If the key is lost while the store remains,
/// `Recommender.open` fails with `L2recError.StoreKey`: delete the store
/// directory (its data is unreadable without the key) and open again.
public enum MasterKey {
    public struct KeychainError: Error, Equatable {
        public let status: OSStatus
    }

    /// The key stored under `service`/`account`, created on first use.
    public static func loadOrCreate(
        service: String = "l2rec.store",
        account: String = "master-key"
    ) throws -> Data {
        let query: [String: Any] = [
            kSecClass as String: kSecClassGenericPassword,
            kSecAttrService as String: service,
            kSecAttrAccount as String: account,
            kSecReturnData as String: true,
            kSecMatchLimit as String: kSecMatchLimitOne,
        ]
        var item: CFTypeRef?
        let status = SecItemCopyMatching(query as CFDictionary, &item)
        if status == errSecSuccess {
            guard let key = item as? Data, key.count == 32 else {
                throw KeychainError(status: errSecDecode)
            }
            return key
        }
        guard status == errSecItemNotFound else { throw KeychainError(status: status) }

        var key = Data(count: 32)
        let random = key.withUnsafeMutableBytes { bytes in
            SecRandomCopyBytes(kSecRandomDefault, 32, bytes.baseAddress!)
        }
        guard random == errSecSuccess else { throw KeychainError(status: random) }
        let add: [String: Any] = [
            kSecClass as String: kSecClassGenericPassword,
            kSecAttrService as String: service,
            kSecAttrAccount as String: account,
            kSecValueData as String: key,
            kSecAttrAccessible as String: kSecAttrAccessibleAfterFirstUnlockThisDeviceOnly,
        ]
        let added = SecItemAdd(add as CFDictionary, nil)
        guard added == errSecSuccess else { throw KeychainError(status: added) }
        return key
    }
}

extension Data {
    /// Little-endian `f32` bytes (as `UserExport` carries `phi` and view
    /// states) as floats. Apple platforms are little-endian.
    public func l2recFloats() -> [Float] {
        var floats = [Float](repeating: 0, count: count / 4)
        floats.withUnsafeMutableBytes { _ = self.copyBytes(to: $0) }
        return floats
    }
}
