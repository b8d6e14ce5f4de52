import CloudAgentCore
import Foundation

/// Where a session's files live under the data directory:
/// `workspaces/<sessionId>` (the git checkout), `homes/<sessionId>` (its HOME),
/// `runtimes/<sessionId>.log` (its runtime's stdout and stderr) and `mirrors/<sessionId>.git`
/// (the control plane's own bare repository that auto-commit pushes from; never visible to the
/// agent).
public struct WorkspaceLayout: Sendable {
    public let dataDirectory: URL

    public init(dataDirectory: URL) {
        self.dataDirectory = dataDirectory.standardizedFileURL
    }

    public var workspacesDirectory: URL { dataDirectory.appendingPathComponent("workspaces", isDirectory: true) }
    public var homesDirectory: URL { dataDirectory.appendingPathComponent("homes", isDirectory: true) }
    public var runtimesDirectory: URL { dataDirectory.appendingPathComponent("runtimes", isDirectory: true) }
    public var mirrorsDirectory: URL { dataDirectory.appendingPathComponent("mirrors", isDirectory: true) }

    public func workspace(_ id: SessionID) -> URL {
        workspacesDirectory.appendingPathComponent(id.rawValue, isDirectory: true)
    }

    public func home(_ id: SessionID) -> URL {
        homesDirectory.appendingPathComponent(id.rawValue, isDirectory: true)
    }

    public func mirror(_ id: SessionID) -> URL {
        mirrorsDirectory.appendingPathComponent(id.rawValue + ".git", isDirectory: true)
    }

    public func runtimeLog(_ id: SessionID) -> URL {
        runtimesDirectory.appendingPathComponent(id.rawValue + ".log", isDirectory: false)
    }

    /// Deletes the session's workspace, home, mirror and runtime log (whichever exist). A
    /// symlink the agent left is removed, never followed.
    public func remove(_ id: SessionID) {
        removeWorkspaceAndHome(id)
        try? FileManager.default.removeItem(at: mirror(id))
        try? FileManager.default.removeItem(at: runtimeLog(id))
    }

    func removeWorkspaceAndHome(_ id: SessionID) {
        try? FileManager.default.removeItem(at: workspace(id))
        try? FileManager.default.removeItem(at: home(id))
    }
}
