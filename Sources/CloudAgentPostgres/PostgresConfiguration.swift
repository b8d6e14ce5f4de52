import Foundation
import PostgresNIO

/// Where the PostgreSQL store connects, read from `CLOUD_AGENT_DATABASE_URL`
/// (`postgres://user:pass@host:port/db?sslmode=disable|require`).
///
/// The user and password are percent-decoded, the port defaults to 5432, and `sslmode=require`
/// asks for TLS with the system's trust roots and full certificate verification; `disable` or no
/// `sslmode` connects in plain text (a database on loopback or a private network).
public struct PostgresConfiguration: Sendable, Equatable {
    /// Whether the connection is encrypted.
    public enum TLSMode: String, Sendable, Equatable {
        case disable
        case require
    }

    public var host: String
    public var port: Int
    public var username: String
    public var password: String?
    public var database: String
    public var tls: TLSMode

    public init(host: String, port: Int = 5432, username: String, password: String?, database: String, tls: TLSMode = .disable) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.database = database
        self.tls = tls
    }

    /// Parses a `postgres://` (or `postgresql://`) URL. Throws `PostgresConfigurationError`, whose
    /// description says what is wrong without repeating the URL (it may hold a password).
    public init(url: String) throws {
        func invalid(_ reason: String) -> PostgresConfigurationError { PostgresConfigurationError(reason: reason) }
        guard let components = URLComponents(string: url) else {
            throw invalid("is not a URL (percent-encode reserved characters such as @, : and / in the user and password)")
        }
        guard let scheme = components.scheme?.lowercased(), scheme == "postgres" || scheme == "postgresql" else {
            throw invalid("must start with postgres:// or postgresql://")
        }
        guard let host = components.host, !host.isEmpty else { throw invalid("has no host") }
        guard let user = components.user, !user.isEmpty else { throw invalid("has no user name") }
        if let port = components.port, !(1...65_535).contains(port) { throw invalid("has a port out of range (1–65535)") }
        // `path`, `user` and `password` are percent-decoded already.
        let path = components.path.hasPrefix("/") ? String(components.path.dropFirst()) : components.path
        guard !path.isEmpty else { throw invalid("has no database name (postgres://user:pass@host:port/DATABASE)") }
        guard !path.contains("/") else { throw invalid("has a path of more than one part; it must be /DATABASE") }
        var tls = TLSMode.disable
        for item in components.queryItems ?? [] {
            switch item.name {
            case "sslmode":
                guard let value = item.value, let mode = TLSMode(rawValue: value) else {
                    throw invalid("has sslmode=\(item.value ?? ""); use sslmode=disable or sslmode=require")
                }
                tls = mode
            default:
                throw invalid("has an unknown parameter \(item.name); only sslmode is understood")
            }
        }
        self.init(
            host: host, port: components.port ?? 5432, username: user, password: components.password,
            database: path, tls: tls
        )
    }

    /// The postgres-nio client configuration. `require` builds a TLS context here, which can fail
    /// when the system's trust roots cannot be loaded.
    public func clientConfiguration() throws -> PostgresClient.Configuration {
        let mode: PostgresClient.Configuration.TLS =
            switch tls {
            case .disable: .disable
            case .require: .require(.makeClientConfiguration())
            }
        return PostgresClient.Configuration(host: host, port: port, username: username, password: password, database: database, tls: mode)
    }

    /// The configuration of a single connection outside the pool (the cluster's listening
    /// connection), with the same TLS rules.
    public func connectionConfiguration() throws -> PostgresConnection.Configuration {
        let mode: PostgresConnection.Configuration.TLS =
            switch tls {
            case .disable: .disable
            case .require: .require(try NIOSSLContext(configuration: .makeClientConfiguration()))
            }
        return PostgresConnection.Configuration(host: host, port: port, username: username, password: password, database: database, tls: mode)
    }
}

/// A `CLOUD_AGENT_DATABASE_URL` that cannot be used. It names the setting and what is wrong,
/// never the URL itself, so that a password in it never reaches a log.
public struct PostgresConfigurationError: Error, Equatable, CustomStringConvertible {
    public var reason: String

    public var description: String { "CLOUD_AGENT_DATABASE_URL \(reason)" }
}
