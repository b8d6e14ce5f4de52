import Crypto
import Foundation

/// Seals secret values at rest with AES-256-GCM under the server's key.
public struct SecretBox: Sendable {
    public struct KeyError: Error, CustomStringConvertible {
        public var description: String
    }

    public struct OpenError: Error, CustomStringConvertible {
        public var description: String { "a sealed value could not be opened: wrong secret key or corrupted data" }
    }

    private let key: SymmetricKey

    public init(key: SymmetricKey) { self.key = key }

    /// A key written as base64 of 32 bytes (the form of `CLOUD_AGENT_SECRET_KEY`).
    public init(base64Key: String) throws(KeyError) {
        guard let data = Data(base64Encoded: base64Key.trimmingCharacters(in: .whitespacesAndNewlines)), data.count == 32 else {
            throw KeyError(description: "the secret key must be base64 of 32 bytes (256 bits)")
        }
        self.key = SymmetricKey(data: data)
    }

    public static func generateBase64Key() -> String {
        SymmetricKey(size: .bits256).withUnsafeBytes { Data($0).base64EncodedString() }
    }

    public func seal(_ plaintext: String) -> SealedValue {
        // AES.GCM.seal only fails for an invalid key size or nonce, which cannot happen here.
        let box = try! AES.GCM.seal(Data(plaintext.utf8), using: key)
        return SealedValue(combined: box.combined!)
    }

    public func open(_ sealed: SealedValue) throws(OpenError) -> String {
        do {
            let box = try AES.GCM.SealedBox(combined: sealed.combined)
            return String(decoding: try AES.GCM.open(box, using: key), as: UTF8.self)
        } catch {
            throw OpenError()
        }
    }
}

/// Bearer tokens: random, shown once, stored only as their SHA-256.
public enum BearerToken {
    public static func generate(prefix: String = "cat_") -> String {
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
        return prefix
            + Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    public static func hash(_ token: String) -> String {
        SHA256.hash(data: Data(token.utf8)).map { String(format: "%02x", $0) }.joined()
    }
}
