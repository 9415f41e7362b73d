# Reference values for lacrima.invariance (multi-group CFA across sites).
#
# Run:  cd tests/reference && Rscript invariance_lavaan.R
# Reads invariance_data.csv (written by invariance_data.py, committed) and writes
# invariance_lavaan.json next to this script. The tests read the JSON; they never run R.
# Produced with R 4.2 and lavaan 0.6-14 from Debian bookworm (apt-get install r-cran-lavaan).
# Every case records the exact lavaan call in its "call" field. Estimator ML (lavaan's
# default likelihood "normal": S with divisor n_g, chi2 = N F), listwise deletion.

suppressPackageStartupMessages({
  library(lavaan)
  library(jsonlite)
})

d <- read.csv("invariance_data.csv")
# Groups in sorted order, as lacrima.invariance fits them (il, it, us).
groups <- sort(unique(d$site))

wai <- "task =~ wai_01 + wai_02 + wai_10 + wai_12
        bond =~ wai_03 + wai_05 + wai_07 + wai_09
        goal =~ wai_04 + wai_06 + wai_08 + wai_11"
ctsc <- paste("change =~", paste(sprintf("ctsc_%02d", 1:16), collapse = " + "))

# Partial scalar with wai_04's intercept free at il only (group 1 of il, it, us):
# equal loadings by group.equal; intercepts equal through labels except wai_04 at il;
# latent means fixed at 0 in group 1, free elsewhere.
wai_items <- c("wai_01", "wai_02", "wai_10", "wai_12", "wai_03", "wai_05", "wai_07",
               "wai_09", "wai_04", "wai_06", "wai_08", "wai_11")
intercepts <- sapply(wai_items, function(v) {
  if (v == "wai_04") sprintf("%s ~ c(i_%s_il, i_%s, i_%s)*1", v, v, v, v)
  else sprintf("%s ~ c(i_%s, i_%s, i_%s)*1", v, v, v, v)
})
wai_partial <- paste(wai, paste(intercepts, collapse = "\n"),
                     "task ~ c(0, NA, NA)*1\nbond ~ c(0, NA, NA)*1\ngoal ~ c(0, NA, NA)*1",
                     sep = "\n")

measures <- c("npar", "chisq", "df", "pvalue", "cfi", "rmsea", "rmsea.ci.lower",
              "rmsea.ci.upper", "srmr", "baseline.chisq", "baseline.df")

run <- function(model_name, syntax_name, syntax, equal) {
  call <- sprintf('cfa(%s, data = d, group = "site", group.label = c("il", "it", "us"), estimator = "ML"%s)',
                  syntax_name,
                  if (length(equal)) sprintf(", group.equal = c(%s)",
                                            paste(sprintf('"%s"', equal), collapse = ", ")) else "")
  fit <- if (length(equal)) {
    cfa(syntax, data = d, group = "site", group.label = groups, estimator = "ML",
        group.equal = equal)
  } else {
    cfa(syntax, data = d, group = "site", group.label = groups, estimator = "ML")
  }
  fm <- fitMeasures(fit, measures)
  list(fit = fit, out = c(list(model = model_name, call = call), as.list(unclass(fm))))
}

lrt <- function(a, b) {
  t <- lavTestLRT(a$fit, b$fit)
  list(chi2_diff = t[["Chisq diff"]][2], df_diff = t[["Df diff"]][2],
       p_diff = t[["Pr(>Chisq)"]][2],
       lrt_call = "lavTestLRT(restricted, free)")
}

out <- list(lavaan = as.character(packageVersion("lavaan")), R = R.version.string)
for (scale in c("alliance", "change")) {
  syntax <- if (scale == "alliance") wai else ctsc
  nm <- if (scale == "alliance") "wai" else "ctsc"
  conf <- run("configural", nm, syntax, character(0))
  met <- run("metric", nm, syntax, c("loadings"))
  sca <- run("scalar", nm, syntax, c("loadings", "intercepts"))
  res <- list(configural = conf$out,
              metric = c(met$out, lrt(met, conf)),
              scalar = c(sca$out, lrt(sca, met)))
  if (scale == "alliance") {
    par <- run("partial_scalar", "wai_partial", wai_partial, c("loadings"))
    par$out$freed <- "wai_04@il"
    res$partial_scalar <- c(par$out, lrt(par, met))
    # Score test of every equality constraint of the scalar model (lavTestScore):
    # the largest univariate statistic should be an il intercept of wai_04.
    sc <- lavTestScore(sca$fit)$uni
    pt <- parTable(sca$fit)
    best <- sc[which.max(sc$X2), ]
    res$scalar_score_test_max <- list(lhs = best$lhs, rhs = best$rhs, X2 = best$X2,
      lhs_par = paste(pt[pt$plabel == best$lhs, c("lhs", "op", "rhs", "group")], collapse = " "),
      rhs_par = paste(pt[pt$plabel == best$rhs, c("lhs", "op", "rhs", "group")], collapse = " "),
      call = "lavTestScore(scalar)$uni")
  }
  out[[scale]] <- res
}
# Partial metric invariance (invariance_data_metric.csv: wai_08's loading planted at il, and
# wai_04's intercept as above). Per-group labels free one loading at one site: the loadings
# equal across groups by label except wai_08 at il (group 1); configural and metric as above.
# The partial scalar model keeps that loading free and frees wai_04's intercept at il.
d <- read.csv("invariance_data_metric.csv")
lab <- function(v, free_at_il) if (free_at_il) sprintf("c(l_%s_il, l_%s, l_%s)*%s", v, v, v, v) else
  sprintf("c(l_%s, l_%s, l_%s)*%s", v, v, v, v)
fac <- function(name, items) paste0(name, " =~ ", items[1], " + ",
  paste(sapply(items[-1], function(v) lab(v, v == "wai_08")), collapse = " + "))
wai_pm <- paste(fac("task", c("wai_01", "wai_02", "wai_10", "wai_12")),
                fac("bond", c("wai_03", "wai_05", "wai_07", "wai_09")),
                fac("goal", c("wai_04", "wai_06", "wai_08", "wai_11")), sep = "\n")
wai_ps <- paste(wai_pm, paste(intercepts, collapse = "\n"),
                "task ~ c(0, NA, NA)*1\nbond ~ c(0, NA, NA)*1\ngoal ~ c(0, NA, NA)*1", sep = "\n")
conf <- run("configural", "wai", wai, character(0))
met <- run("metric", "wai", wai, c("loadings"))
pm <- run("partial_metric", "wai_pm", wai_pm, character(0))
pm$out$freed <- "wai_08@il"
ps <- run("partial_scalar", "wai_ps", wai_ps, character(0))
ps$out$freed <- "wai_08@il (loading);wai_04@il"
out$alliance_partial_metric <- list(
  data = "invariance_data_metric.csv",
  syntax_partial_metric = wai_pm, syntax_partial_scalar = wai_ps,
  configural = conf$out, metric = c(met$out, lrt(met, conf)),
  partial_metric = c(pm$out, lrt(pm, conf)), partial_scalar = c(ps$out, lrt(ps, pm)))
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE), "invariance_lavaan.json")
