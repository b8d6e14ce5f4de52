import CloudAgentCore
import CloudAgentSQLite
import CloudAgentServer
import Foundation

/// Opens the store the configuration names.
public enum StoreFactory {
    public struct Unsupported: Error, CustomStringConvertible {
        public var description: String
    }

    public static func open(_ configuration: ServerConfiguration) throws -> any SessionStore {
        guard let path = configuration.sqlitePath else {
            throw Unsupported(description: "PostgreSQL (\(configuration.databaseURL ?? "")) is not supported by this build yet; use sqlite:PATH")
        }
        try FileManager.default.createDirectory(at: URL(fileURLWithPath: path).deletingLastPathComponent(), withIntermediateDirectories: true)
        return try SQLiteSessionStore(path: path)
    }
}
