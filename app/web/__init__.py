"""Server-rendered pages for people: sign-in, the weekly digest, clusters and label corrections."""
