@testable import CloudAgentEngine
@testable import CloudAgentServer
import CloudAgentTestSupport
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import Testing

/// The console's static routes without a browser: types, the CSP, ETags and 304s, caching of
/// versioned files, and 404 for anything that is not one of its files.
@Suite("Web console routes")
struct ConsoleRoutesTests {
    func withConsole(_ body: @Sendable (any TestClientProtocol) async throws -> Void) async throws {
        let router = Router(context: AppRequestContext.self)
        router.add(middleware: ErrorMiddleware())
        ConsoleRoutes().register(on: router)
        try await Application(router: router).test(.router, body)
    }

    @Test("GET / and /ui/<file>: content types, CSP on each, ETag → 304, versioned files cached for a year, unknown files 404")
    func staticFiles() async throws {
        try await withConsole { client in
            let index = try await client.execute(uri: "/", method: .get)
            #expect(index.status == .ok)
            #expect(index.headers[.contentType] == "text/html; charset=utf-8")
            #expect(index.headers[.contentSecurityPolicy] == ConsoleRoutes.contentSecurityPolicy)
            #expect(index.headers[.cacheControl] == "no-cache")
            let html = String(buffer: index.body)
            // The page names its entry module by content hash, and has no inline script.
            let app = try #require(html.firstRange(of: "/ui/app.js?v=").map { html[$0.upperBound...].prefix(32) })
            #expect(!html.contains("<script>") && !html.contains("style="))

            let versioned = try await client.execute(uri: "/ui/app.js?v=\(app)", method: .get)
            #expect(versioned.status == .ok)
            #expect(versioned.headers[.contentType] == "text/javascript; charset=utf-8")
            #expect(versioned.headers[.cacheControl] == "public, max-age=31536000, immutable")
            #expect(versioned.headers[.eTag] == "\"\(app)\"")
            #expect(versioned.headers[.contentSecurityPolicy] == ConsoleRoutes.contentSecurityPolicy)

            let plain = try await client.execute(uri: "/ui/session.js", method: .get)
            #expect(plain.headers[.cacheControl] == "no-cache")
            let etag = try #require(plain.headers[.eTag])
            let again = try await client.execute(uri: "/ui/session.js", method: .get, headers: [.ifNoneMatch: etag])
            #expect(again.status == .notModified)
            #expect(again.body.readableBytes == 0)
            #expect(try await client.execute(uri: "/ui/console.css", method: .get).headers[.contentType] == "text/css; charset=utf-8")
            #expect(try await client.execute(uri: "/ui/icon.svg", method: .get).headers[.contentType] == "image/svg+xml")

            for path in ["/ui/nope.js", "/ui/..%2Fopenapi.yaml", "/ui/%2e%2e", "/ui/"] {
                #expect(try await client.execute(uri: path, method: .get).status == .notFound, "\(path)")
            }
        }
    }
}
