import CloudAgentCore
import Foundation

/// The data directory: database, workspaces, the generated secret key and API token (mode 0600).
public struct DataDirectory: Sendable {
    public let root: URL

    public init(_ root: URL) throws {
        self.root = root
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
    }

    /// The secret key, generated once into `secret.key`.
    public func secretKey() throws -> String { try readOrCreate("secret.key") { SecretBox.generateBase64Key() } }

    /// This node's id among several on one database, generated once into `node-id`.
    public func nodeId() throws -> String { try readOrCreate("node-id") { "node_" + UUID().uuidString.lowercased().prefix(8) } }

    /// The API token of user `local`, generated once into `api-token`.
    public func apiToken() throws -> String { try readOrCreate("api-token") { BearerToken.generate() } }

    private func readOrCreate(_ name: String, _ make: () -> String) throws -> String {
        let url = root.appendingPathComponent(name)
        if let existing = try? String(contentsOf: url, encoding: .utf8) {
            let trimmed = existing.trimmingCharacters(in: .whitespacesAndNewlines)
            if !trimmed.isEmpty { return trimmed }
        }
        let value = make()
        guard FileManager.default.createFile(atPath: url.path, contents: Data((value + "\n").utf8), attributes: [.posixPermissions: 0o600]) else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: url.path])
        }
        return value
    }
}
