import CloudAgentCore
import CloudAgentEngine
import Foundation
import Hummingbird
import HummingbirdWebSocket
import Logging

/// The request context: who is calling, once the bearer token was checked.
public struct AppRequestContext: RequestContext, WebSocketRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let webSocket: WebSocketHandlerReference<Self>
    public var owner: Owner?

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.webSocket = .init()
        self.owner = nil
    }

    public var maxUploadSize: Int { Limits.requestBodyBytes }

    /// The authenticated owner; routes behind `BearerAuthentication` always have one.
    public func requireOwner() throws -> Owner {
        guard let owner else { throw APIError.unauthorized }
        return owner
    }
}

/// Resolves bearer tokens to owners: the server's own token (user `local`) kept in memory, and
/// tokens made by `cloud-agent tokens create`, stored hashed.
public actor TokenAuthority {
    private let store: any SessionStore
    private let localTokenHash: String
    private var cache: [String: Owner] = [:]

    public init(store: any SessionStore, localToken: String) {
        self.store = store
        self.localTokenHash = BearerToken.hash(localToken)
    }

    public func owner(for token: String) async throws -> Owner? {
        let hash = BearerToken.hash(token)
        if hash == localTokenHash { return .local }
        if let cached = cache[hash] { return cached }
        guard let owner = try await store.owner(forTokenHash: hash) else { return nil }
        if cache.count > 10_000 { cache.removeAll() }
        cache[hash] = owner
        return owner
    }
}

/// Requires `Authorization: Bearer <token>` and records the owner in the context.
struct BearerAuthentication: RouterMiddleware {
    typealias Context = AppRequestContext
    let authority: TokenAuthority

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let header = request.headers[.authorization], header.count > 7,
            header.prefix(7).lowercased() == "bearer ",
            let owner = try await authority.owner(for: String(header.dropFirst(7)).trimmingCharacters(in: .whitespaces))
        else { throw APIError.unauthorized }
        var context = context
        context.owner = owner
        context.logger[metadataKey: "user"] = "\(owner)"
        return try await next(request, context)
    }
}
