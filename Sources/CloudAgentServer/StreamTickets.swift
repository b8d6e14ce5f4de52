import CloudAgentCore
import CloudAgentEngine
import Crypto
import Foundation

/// Short-lived stream tickets, for `?ticket=` where a client cannot set headers (a browser's
/// WebSocket): `base64url(payload).base64url(HMAC-SHA256(payload))`, the payload binding the
/// ticket to one user (+ org) and one session until it expires. The key is generated once per
/// server and kept in the store.
public struct StreamTickets: Sendable {
    struct Payload: Codable {
        var user: String
        var org: String?
        var session: String
        var expiresAtMs: Int64
    }

    private let key: SymmetricKey
    public let lifetimeMs: Int64

    public init(key: String, lifetimeMs: Int64 = 60_000) {
        self.key = SymmetricKey(data: Data(key.utf8))
        self.lifetimeMs = lifetimeMs
    }

    public func issue(owner: Owner, session: SessionID, now: Date) -> (ticket: String, expiresAt: Date) {
        let expiresAt = now.adding(milliseconds: lifetimeMs)
        let payload = Payload(user: owner.user, org: owner.org, session: session.rawValue, expiresAtMs: expiresAt.millisecondsSince1970)
        // Encoding a plain struct cannot fail.
        let body = try! JSONEncoder().encode(payload)
        let signature = Data(HMAC<SHA256>.authenticationCode(for: body, using: key))
        return (Self.base64URL(body) + "." + Self.base64URL(signature), expiresAt)
    }

    /// The owner a ticket speaks for, when it is genuine, unexpired and for this session.
    public func verify(_ ticket: String, session: SessionID, now: Date) -> Owner? {
        let parts = ticket.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 2, let body = Self.data(base64URL: String(parts[0])), let signature = Self.data(base64URL: String(parts[1])),
            HMAC<SHA256>.isValidAuthenticationCode(signature, authenticating: body, using: key),
            let payload = try? JSONDecoder().decode(Payload.self, from: body),
            payload.session == session.rawValue, payload.expiresAtMs > now.millisecondsSince1970
        else { return nil }
        return Owner(user: payload.user, org: payload.org)
    }

    static func base64URL(_ data: Data) -> String {
        data.base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    static func data(base64URL text: String) -> Data? {
        var base64 = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while base64.count % 4 != 0 { base64 += "=" }
        return Data(base64Encoded: base64)
    }
}
