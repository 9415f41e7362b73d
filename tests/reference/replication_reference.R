# Reference values for lacrima.replication: small telescopes (r33, p_small_telescope) and
# the assessment of pooled sides (Many Labs design: sites of either role pooled).
#
# Run:  cd tests/reference && Rscript replication_reference.R
# Writes replication_reference.json next to this script. The tests read the JSON; they never
# run R. Produced with R 4.2, pwr 1.3-0 and metafor 3.8-1 from Debian bookworm
# (apt-get install r-cran-pwr r-cran-metafor r-cran-jsonlite). Every value records the
# exact R call that produced it in its "call" field.

suppressPackageStartupMessages({
  library(pwr)
  library(metafor)
  library(jsonlite)
})

num <- function(x) sprintf("%.17g", x)

# --- r33: the r the original had 1/3 power to detect (Simonsohn 2015), as pwr computes it.
# A partial correlation with g covariates runs on n - g observations.
r33_cases <- list()
grid <- expand.grid(n = c(8, 10, 12, 15, 20, 25, 30, 40, 50, 64, 80, 95, 100, 106, 124, 150,
                          200, 300, 500, 1000, 4000),
                    g = 0:3)
for (i in seq_len(nrow(grid))) {
  n <- grid$n[i]; g <- grid$g[i]
  call <- sprintf("pwr.r.test(n = %s - %s, sig.level = 0.05, power = 1/3)$r", n, g)
  r33_cases[[i]] <- list(n = n, g = g, call = call,
                         r33 = pwr.r.test(n = n - g, sig.level = 0.05, power = 1/3)$r)
}
# The plan's alpha and power may differ: one case at power 0.5, alpha 0.10.
r33_cases[[length(r33_cases) + 1]] <- list(
  n = 106, g = 0, alpha = 0.10, power = 0.5,
  call = "pwr.r.test(n = 106, sig.level = 0.10, power = 0.5)$r",
  r33 = pwr.r.test(n = 106, sig.level = 0.10, power = 0.5)$r)

# --- p_small_telescope: one-sided test of the replication r against r33
# (pnorm of the Fisher-z difference over 1/sqrt(n_r - 3 - g); mirrored for a negative r33).
st <- data.frame(r_o = c(0.30, 0.30, -0.25, 0.20, 0.35, 0.05),
                 n_o = c(106, 100, 95, 40, 124, 300),
                 r_r = c(0.10, 0.02, -0.05, 0.30, -0.10, 0.01),
                 n_r = c(124, 124, 200, 80, 106, 1000),
                 g = c(0, 1, 0, 3, 2, 0))
small_cases <- list()
for (i in seq_len(nrow(st))) {
  s <- st[i, ]
  r33 <- sign(s$r_o) * pwr.r.test(n = s$n_o - s$g, sig.level = 0.05, power = 1/3)$r
  z <- (atanh(s$r_r) - atanh(r33)) * sqrt(s$n_r - 3 - s$g)
  p <- if (r33 >= 0) pnorm(z) else pnorm(-z)
  small_cases[[i]] <- list(
    r_original = s$r_o, n_original = s$n_o, r_replication = s$r_r, n_replication = s$n_r,
    g = s$g, r33 = r33, p_small_telescope = p,
    call = sprintf(paste0("r33 <- sign(%s) * pwr.r.test(n = %s - %s, sig.level = 0.05, power = 1/3)$r; ",
                          "z <- (atanh(%s) - atanh(r33)) * sqrt(%s - 3 - %s); ",
                          "if (r33 >= 0) pnorm(z) else pnorm(-z)"),
                   s$r_o, s$n_o, s$g, s$r_r, s$n_r, s$g))
}

# --- Pooled sides: 2 originals x 3 replications of one correlation (g covariates).
# Each role pooled with rma(yi, vi, method = "REML", test = "adhoc") on Fisher z,
# vi = 1/(n - 3 - g), as lacrima.pooling pools (REML, Hartung-Knapp on k - 1 df) with the
# Knapp-Hartung ad hoc standard error (never below the Wald one); a pooled side enters the
# assessment with its estimate and se^2 in place of atanh(r) and 1/(n - 3 - g).
# pooled_side = "fe" (and "auto" for k <= 3 sites): rma(yi, vi, method = "FE") per role instead.
pooled_case <- function(name, orig_r, orig_n, rep_r, rep_n, g, model = "re") {
  # REML to the maximiser (lacrima's rule): control = list(threshold = 1e-12, maxiter = 1000)
  fit <- function(r, n) if (model == "fe") rma(yi = atanh(r), vi = 1 / (n - 3 - g), method = "FE") else
    rma(yi = atanh(r), vi = 1 / (n - 3 - g), method = "REML", test = "adhoc",
        control = list(threshold = 1e-12, maxiter = 1000))
  fo <- fit(orig_r, orig_n); fr <- fit(rep_r, rep_n)
  side <- function(f) list(estimate = as.numeric(f$b), se = f$se, p = f$pval)
  pair <- function(zo, vo, zr, vr, r_r) {
    half <- qnorm(0.975) * sqrt(vo + vr)
    n_eff <- 1 / vo + 3 + g        # a pooled original's n for small telescopes
    r33 <- sign(zo) * pwr.r.test(n = n_eff - g, sig.level = 0.05, power = 1/3)$r
    zst <- (atanh(r_r) - atanh(r33)) / sqrt(vr)
    list(pi_low = tanh(zo - half), pi_high = tanh(zo + half),
         p_difference = 2 * pnorm(-abs((zo - zr) / sqrt(vo + vr))),
         r33 = r33, p_small_telescope = if (r33 >= 0) pnorm(zst) else pnorm(-zst))
  }
  zr <- as.numeric(fr$b); vr <- fr$se^2
  zo <- as.numeric(fo$b); vo <- fo$se^2
  vs_orig <- lapply(seq_along(orig_r), function(i)
    pair(atanh(orig_r[i]), 1 / (orig_n[i] - 3 - g), zr, vr, tanh(zr)))
  list(
    input = list(orig_r = orig_r, orig_n = orig_n, rep_r = rep_r, rep_n = rep_n, g = g),
    call = paste0(if (model == "fe") "rma(yi = atanh(r), vi = 1/(n - 3 - g), method = 'FE') per role; " else
                  "rma(yi = atanh(r), vi = 1/(n - 3 - g), method = 'REML', test = 'adhoc', control = list(threshold = 1e-12, maxiter = 1000)) per role; ",
                  "PI tanh(zo +/- qnorm(.975) sqrt(vo + vr)); p_difference 2 pnorm(-|zo - zr| / sqrt(vo + vr)); ",
                  "r33 sign(zo) pwr.r.test(n = 1/vo + 3, power = 1/3)$r; ",
                  "p_small_telescope pnorm((atanh(r_r) - atanh(r33)) / sqrt(vr)), mirrored when r33 < 0"),
    pooled_replication = side(fr), pooled_original = side(fo),
    pooled_replication_vs_original = vs_orig,
    pooled_replication_vs_pooled_original = pair(zo, vo, zr, vr, tanh(zr)))
}
pooled <- list(
  correlation = pooled_case("correlation", c(0.35, 0.28), c(106, 100), c(0.30, 0.12, 0.22),
                            c(124, 90, 150), 0),
  # two originals that agree closely: the untruncated Hartung-Knapp se would be ~0.005
  agreeing = pooled_case("agreeing", c(0.30, 0.31), c(100, 97), c(0.25, 0.12, 0.20),
                         c(124, 90, 150), 0),
  partial = pooled_case("partial", c(-0.30, -0.18), c(106, 100), c(-0.05, -0.20, -0.11),
                        c(124, 90, 150), 2))

pooled_fe <- list(
  correlation = pooled_case("correlation", c(0.35, 0.28), c(106, 100), c(0.30, 0.12, 0.22),
                            c(124, 90, 150), 0, "fe"),
  partial = pooled_case("partial", c(-0.30, -0.18), c(106, 100), c(-0.05, -0.20, -0.11),
                        c(124, 90, 150), 2, "fe"),
  # two replication sites (the issue: with the Hartung-Knapp t on 1 df none could be significant)
  two_replications = pooled_case("two_replications", c(0.35, 0.28), c(106, 100), c(0.30, 0.22),
                                 c(124, 150), 0, "fe"))

out <- list(
  meta = list(R = R.version.string, pwr = as.character(packageVersion("pwr")),
              metafor = as.character(packageVersion("metafor"))),
  r33 = r33_cases, small_telescope = small_cases, pooled = pooled,
  pooled_fe = pooled_fe)
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE), "replication_reference.json")
